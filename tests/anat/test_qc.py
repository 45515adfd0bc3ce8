"""Registration QC: a good registration passes, a deliberately broken one is flagged."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.anat._antsio import write_affine
from pipeline.anat.options import AnatOptions
from pipeline.anat.qc import QC_COLUMNS, qc_failures, registration_qc
from pipeline.anat.segment import warp_image
from pipeline.anat.synthetic import pose_image, rigid_about


def test_qc_passes_good_and_flags_broken_registration(small_template, brain_points, tmp_path):
    t1w, mask = small_template
    _, center = brain_points
    truth = rigid_about(
        Rotation.from_euler("zyx", [90, 30, 160], degrees=True).as_matrix(), center, [5, 5, -5]
    )
    # a subject with a monotone gauge, resampled back through the true and through a broken transform
    subject = pose_image(t1w, truth, gamma=1.4, gain=3.0, offset=20.0)
    subject_mask = pose_image(mask, truth)
    good = write_affine(truth, tmp_path / "good.h5")
    broken_matrix = truth @ rigid_about(
        Rotation.from_euler("x", 90, degrees=True).as_matrix(), center, [0, 0, 0]
    )
    broken = write_affine(broken_matrix, tmp_path / "broken.h5")
    options = AnatOptions(qc_min_dice=0.75)  # 6 mm grids: two resamplings erode a mask

    def qc(xfm):
        warped = warp_image(subject, t1w, xfm)
        wmask = nib.Nifti1Image(
            (warp_image(subject_mask, t1w, xfm).get_fdata() > 0.5).astype(np.uint8), t1w.affine
        )
        return registration_qc(t1w, mask, warped, wmask, xfm)

    ok = qc(good)
    assert list(ok) == list(QC_COLUMNS)
    assert qc_failures(ok, options) == []
    assert ok["folding"] == 0.0 and abs(ok["jac_median"] - 1.0) < 1e-3  # rigid: det = 1

    bad = qc(broken)
    failed_names = {f.split("=")[0] for f in qc_failures(bad, options)}
    assert {"mi", "rank_corr"} <= failed_names
    assert bad["rank_corr"] < ok["rank_corr"] - 0.3
    assert bad["dice"] < ok["dice"]

    shift = np.eye(4)
    shift[:3, 3] = [0, 40, 0]
    shifted = qc(write_affine(truth @ shift, tmp_path / "shifted.h5"))
    assert {"mi", "rank_corr", "dice"} <= {f.split("=")[0] for f in qc_failures(shifted, options)}


def test_qc_failures_reports_value_and_threshold():
    metrics = dict.fromkeys(QC_COLUMNS, 0.0) | {
        "mi": 1.0,
        "rank_corr": 0.9,
        "dice": 0.95,
        "folding": 0.01,
    }
    failures = qc_failures(metrics, AnatOptions(qc_max_folding=0.001))
    assert failures == ["folding=0.01 (needs <= 0.001)"]
