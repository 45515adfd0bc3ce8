"""Nipype interfaces: thin wrappers that make one library call each.

* :mod:`pipeline.interfaces.bids` — the derivative sinks (names from :mod:`pipeline.outputs`).
"""
