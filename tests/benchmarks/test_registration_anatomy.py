"""Fast checks of ``benchmarks/registration_anatomy.py``: its ground truth, conventions and verdict.

A full case (six registrations) takes minutes, so these test the parts that decide whether its
numbers mean anything: the true template → subject map, the point-mapping convention, and the
conclusion line.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmarks import registration_anatomy as bench


@pytest.fixture(scope="module")
def setting():
    from pipeline.data.demo import brain_centre
    from pipeline.data.templates import load_template

    template = load_template(2)
    mask = template.mask.get_fdata() > 0
    points = np.argwhere(mask)[::40] @ template.t1w.affine[:3, :3].T + template.t1w.affine[:3, 3]
    values = template.t1w.get_fdata()[mask][::40]
    return template, brain_centre(template), points, values


def test_cases_are_fixed_and_2mm():
    a, b = bench._cases(3, 0), bench._cases(5, 0)
    for x, y in zip(a, b[:3], strict=True):
        np.testing.assert_array_equal(x["rotation"], y["rotation"])
        assert x["gauge"]["t1w_voxel_mm"] == [2.0, 2.0, 2.0]
    assert {c["gauge"]["orientation"] for c in a} == {"RAS", "LPS", "ASR"}


def test_true_map_pulls_the_subject_back(setting):
    template, centre, points, values = setting
    case = bench._cases(2, 0)[1]
    subject = bench.Subject(template, centre, points, case, True, 3.0)
    rho_truth = stats.spearmanr(subject.sample(subject.truth), values).statistic
    rho_pose = stats.spearmanr(subject.sample(subject.pose_only), values).statistic
    # the warp is recovered: the true map beats the pose alone, and the inverse inverts
    assert rho_truth > rho_pose + 0.05
    assert subject.inverse_residual < 0.2
    assert 1.0 < subject.anatomy_mm < 4.0


def test_points_follow_the_fixed_to_moving_convention(setting, tmp_path):
    from scipy.spatial.transform import Rotation

    from pipeline.antsio import write_affine

    _, _, points, _ = setting
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", [30, -50, 100], degrees=True).as_matrix()
    matrix[:3, 3] = [5.0, -3.0, 7.0]
    write_affine(matrix, tmp_path / "m.mat")
    mapped = bench._map_points(points, [str(tmp_path / "m.mat")])
    expected = points @ matrix[:3, :3].T + matrix[:3, 3]
    assert bench._error(mapped, expected) < 1e-4


def _row(err_a: float, u_err_a: float) -> dict:
    row = {"case": 0, "angle": 90.0, "orientation": "RAS", "diagnosis": "TDC", "rejected_a": 0}
    row.update({"anatomy_mm": 2.0, "rho_truth": 0.9, "rho_pose": 0.8, "time_prep": 1.0})
    for key, a in (("", err_a), ("u_", u_err_a)):
        for m, err in (("a", a), ("b", 1.4), ("c", 50.0)):
            if key and m == "c":
                continue
            row.update({f"{key}err_{m}": err, f"{key}rho_{m}": 0.9, f"{key}time_{m}": 10.0})
    return row


def test_conclusion_is_honest():
    good = bench._markdown([_row(1.3, 1.3), _row(1.2, 1.35)], 2, 0, 3.0, 1)
    assert "symprep meets the targets" in good
    assert "Partial" not in good
    failed = bench._markdown([_row(1.3, 1.3), _row(2.5, 1.3)], 3, 0, 3.0, 1)
    assert "does not meet" in failed and "1/2 posed" in failed and "Partial: 2 of 3" in failed
    worse = bench._markdown([_row(1.3, 1.5)], 1, 0, 3.0, 1)
    assert "does not meet" in worse and "misses the target of ≤ SyN's" in worse
