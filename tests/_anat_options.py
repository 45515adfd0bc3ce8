"""The fast anatomical options the tests share (one copy): coarse grids and few iterations."""

from __future__ import annotations

#: a 6 mm registration grid and few iterations: seconds instead of a minute, QC still passes
FAST_ANAT = dict(
    registration_voxel_mm=6.0,
    pose_n_rotations=400,
    pose_fine_mm=6.0,
    pose_n_refine=2,
    rigid_iterations=[20, 10],
    affine_iterations=[30, 10],
    affine_shrink_factors=[2, 1],
    affine_smoothing_sigmas=[1.0, 0.0],
    syn_iterations=[10, 5, 0],
    n4_shrink_factor=2,
)
#: the cheapest registration that still passes QC on the tiny demo (no SyN; N4 stays on: the
#: QC's intensity-only tissue classes need the bias field removed)
CHEAP_ANAT = dict(
    registration_voxel_mm=6.0,
    pose_n_rotations=200,
    pose_fine_mm=6.0,
    pose_n_refine=1,
    rigid_iterations=[10, 5],
    affine_iterations=[10, 5],
    affine_shrink_factors=[2, 1],
    affine_smoothing_sigmas=[1.0, 0.0],
    syn=False,
    n4_shrink_factor=4,
)
