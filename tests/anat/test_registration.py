"""Checked registration: the pose is recovered from a 180° start, stages are checked, and the
same seed gives identical transforms."""

from __future__ import annotations

import ants
import numpy as np
import pytest
from _anat_options import FAST_ANAT
from scipy import stats
from scipy.spatial.transform import Rotation

from pipeline.anat.options import AnatOptions
from pipeline.anat.registration import register_to_template
from pipeline.anat.synthetic import displacement_error, pose_image, rigid_about
from pipeline.antsio import nib_to_ants, write_affine

#: a coarse (6 mm) registration grid and few iterations: seconds instead of a minute
FAST = AnatOptions(**{k: v for k, v in FAST_ANAT.items() if k != "n4_shrink_factor"})


@pytest.mark.slow
def test_register_recovers_pose_and_same_seed_is_identical(template2, brain_points, tmp_path, rng):
    pts, center = brain_points
    truth = rigid_about(
        Rotation.from_euler("zx", [180, 25], degrees=True).as_matrix(), center, [12, -9, 6]
    )
    subject = pose_image(
        template2.t1w,
        truth,
        voxel_size=4.0,
        layout="LPS",
        gamma=0.7,
        gain=5.0,
        offset=15.0,
        bias=0.3,
        rng=rng,
    )
    runs = [
        register_to_template(
            subject, template2.t1w, template2.mask, tmp_path / name, FAST, seed=0, threads=1
        )
        for name in ("a", "b")
    ]
    first = runs[0]
    assert displacement_error(first.affine, truth, pts) < 4.0
    assert [s.stage for s in first.stages][:2] == ["pose", "rigid"]
    assert (
        first.stages[0].accepted
        and first.stages[0].score_after > first.stages[0].score_before + 0.3
    )
    # every kept stage did not lower the score by more than the tolerance
    for s in first.stages:
        assert s.accepted == (s.score_after >= s.score_before - FAST.stage_tolerance)
    fixed, moving = nib_to_ants(template2.t1w), nib_to_ants(subject)
    warped = [ants.apply_transforms(fixed, moving, [str(r.forward)]).numpy() for r in runs]
    np.testing.assert_array_equal(warped[0], warped[1])
    np.testing.assert_array_equal(runs[0].affine, runs[1].affine)
    # seed 0 included (ANTs reads --random-seed 0 as "use the clock"): the files match byte for byte
    for a, b in ((runs[0].forward, runs[1].forward), (runs[0].inverse, runs[1].inverse)):
        assert a.read_bytes() == b.read_bytes()
    # as close to the template as the subject pulled back through the true pose
    m = template2.mask.get_fdata() > 0
    true_xfm = write_affine(truth, tmp_path / "truth.mat")
    ideal = ants.apply_transforms(fixed, moving, [str(true_xfm)]).numpy()
    tpl = template2.t1w.get_fdata()[m]
    achieved = stats.spearmanr(warped[0][m], tpl).statistic
    assert achieved > stats.spearmanr(ideal[m], tpl).statistic - 0.1
