"""BOLD→T1w coregistration recovers a known misalignment; a worse result is rejected."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.data.groundtruth import truth_coregistration
from pipeline.func.coreg import coregister, coregistration_qc
from pipeline.func.coreg_eval import brain_points, coreg_accuracy
from pipeline.func.motion import params_to_matrix


def test_coregistration_recovers_known_shift(func_bids, func_anat):
    bold = nib.load(func_bids / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    ref = bold.get_fdata(dtype=np.float32)[..., 2:].mean(axis=3)
    shift = params_to_matrix([4.0, -3.0, 2.0, 0.03, 0.0, -0.02])
    # the BOLD header now places every voxel at S p: T1w point p is BOLD-reference point S p
    moved = nib.Nifti1Image(ref, shift @ bold.affine)
    t1w, mask = nib.load(func_anat["t1w_preproc"]), nib.load(func_anat["t1w_mask"])
    result = coregister(moved, t1w, mask, iterations=(60, 30))
    points = brain_points(mask)
    # the truth: the subject moved between the scans (the generator's record), then the shift
    between, _ = truth_coregistration(func_bids, "sub-01", points, start=2)
    score = coreg_accuracy(result.matrix, shift @ between, points)
    assert result.accepted and score.mean_mm < 1.5  # mm, BOLD voxels are 6 mm
    assert result.mi_after > result.mi_before and result.dice > 0.8
    # the QC metric prefers the truth to the header pose
    mi_truth, _ = coregistration_qc(moved, t1w, np.asarray(mask.dataobj) > 0, shift @ between)
    mi_header, _ = coregistration_qc(moved, t1w, np.asarray(mask.dataobj) > 0, np.eye(4))
    assert mi_truth > mi_header
