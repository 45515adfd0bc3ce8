"""Nipype interfaces: thin wrappers that make one library call each.

* :mod:`pipeline.interfaces.bids` — the derivative sinks (names from :mod:`pipeline.outputs`);
* :mod:`pipeline.interfaces.anat` — validation, N4, registration, segmentation, QC;
* :mod:`pipeline.interfaces.func` — BOLD validation, head motion, slice timing, coregistration,
  resampling, confounds, temporal gauge, ROI features, QC.
"""
