"""Registration QC that can fail: judged on demo subjects (anatomy warped away from the template,
site gauges, bias field) through their *true* pose, and through deliberately wrong ones.

The truth comes from the demo generator, not from our registration, and every measure compares
the subject's own image or tissue (segmented without priors) with the template.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.anat.options import AnatOptions
from pipeline.anat.qc import QC_COLUMNS, qc_failures, qc_for_transforms, qc_record, qc_table
from pipeline.anat.synthetic import rigid_about
from pipeline.antsio import write_affine
from pipeline.data.templates import load_template


def _pose(bids, sub: str) -> np.ndarray:
    path = bids / "sourcedata" / "groundtruth" / sub / f"{sub}_groundtruth.json"
    return np.asarray(json.loads(path.read_text())["pose"]["template_to_scanner"])


@pytest.fixture(scope="module")
def template():
    return load_template(2)


def _qc(t1w, template, forward: np.ndarray, tmp_path, name: str) -> dict[str, float]:
    fwd = write_affine(forward, tmp_path / f"{name}_fwd.mat")
    inv = write_affine(np.linalg.inv(forward), tmp_path / f"{name}_inv.mat")
    return qc_for_transforms(t1w, template, [fwd], [inv])


@pytest.mark.parametrize("sub", ["sub-01", "sub-02"])
def test_true_pose_passes_and_wrong_registrations_fail(tiny_bids, template, tmp_path, sub):
    t1w = nib.load(tiny_bids / sub / "anat" / f"{sub}_T1w.nii.gz")
    pose = _pose(tiny_bids, sub)
    brain = np.argwhere(template.mask.get_fdata() > 0)
    center = brain.mean(0) @ template.t1w.affine[:3, :3].T + template.t1w.affine[:3, 3]
    options = AnatOptions()

    good = _qc(t1w, template, pose, tmp_path, "good")
    assert list(good) == list(QC_COLUMNS)
    assert qc_failures(good, options) == [], good

    wrong = {
        # no registration at all: the head as it lies in the scanner (the circular brain-mask
        # Dice of earlier versions scored 0.96 here)
        "identity": np.eye(4),
        "15 degrees off": pose
        @ rigid_about(Rotation.from_euler("x", 15, degrees=True).as_matrix(), center, [0, 0, 0]),
        "20 mm off": pose @ rigid_about(np.eye(3), center, [0, 20, 0]),
    }
    for name, forward in wrong.items():
        bad = _qc(t1w, template, forward, tmp_path, name.replace(" ", "_"))
        failed = {f.split("=")[0] for f in qc_failures(bad, options)}
        # every measure that a wrong registration should lower does, each on its own
        assert {"mi", "rank_corr", "wm_dice"} <= failed, (name, bad)
        assert bad["wm_dice"] < good["wm_dice"] - 0.1, (name, bad["wm_dice"], good["wm_dice"])


def test_qc_failures_reports_value_and_threshold():
    metrics = dict.fromkeys(QC_COLUMNS, 0.0) | {
        "mi": 1.0,
        "rank_corr": 0.9,
        "wm_dice": 0.8,
        "folding": 0.01,
    }
    failures = qc_failures(metrics, AnatOptions(qc_max_folding=0.001))
    assert failures == ["folding=0.01 (needs <= 0.001)"]


def test_segmentation_failure_is_a_flag_not_silent():
    metrics = dict.fromkeys(QC_COLUMNS, 0.0) | {"mi": 1.0, "rank_corr": 0.9, "wm_dice": 0.8}
    record = qc_record(
        metrics,
        AnatOptions(),
        "01",
        {"Method": "priors", "Failure": "atropos failed: boom"},
    )
    assert record["passed"]  # the registration itself is fine
    assert record["flags"][0] == "segmentation: atropos failed: boom"
    assert any("no subject information" in f for f in record["flags"])
    assert "atropos failed: boom" in qc_table(record).splitlines()[1]
