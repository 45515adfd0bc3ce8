"""Pose search over SO(3): recovered poses against ground truth, and the building blocks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.anat.pose import (
    mutual_information,
    octahedral_group,
    rank_normalize,
    search_pose,
    so3_cover,
)
from pipeline.anat.synthetic import displacement_error, pose_image, rigid_about

FAST = dict(n_rotations=600, coarse_voxel_mm=8.0, fine_voxel_mm=6.0, n_refine=3, maxiter=150)


def test_so3_cover_is_rotations_and_covers(rng):
    cover = so3_cover(600)
    assert np.allclose(np.einsum("kij,kil->kjl", cover, cover), np.eye(3), atol=1e-10)
    assert np.allclose(np.linalg.det(cover), 1.0)
    probes = Rotation.random(200, random_state=1)
    dists = [np.degrees((Rotation.from_matrix(cover).inv() * p).magnitude().min()) for p in probes]
    # 600 rotations: every probe within ~25 degrees (covering radius of a uniform set of this size)
    assert max(dists) < 25.0


def test_octahedral_group_is_a_group():
    group = octahedral_group()
    assert group.shape == (24, 3, 3)
    keys = {tuple(np.round(g).astype(int).ravel()) for g in group}
    for a in group:
        for b in group[:6]:
            assert tuple(np.round(a @ b).astype(int).ravel()) in keys


def test_rank_normalize_and_mi_are_gauge_invariant(rng):
    data = rng.gamma(2.0, 1.0, size=(12, 12, 12))
    mask = data > 0.5
    r1 = rank_normalize(data, mask)
    r2 = rank_normalize(3.0 * np.sqrt(data) + 7.0, mask)  # strictly increasing map
    np.testing.assert_array_equal(r1, r2)
    other = rank_normalize(data + rng.normal(0, 0.5, data.shape), mask)
    assert mutual_information(r1[mask], other[mask]) == pytest.approx(
        mutual_information(r2[mask], other[mask])
    )
    # MI of a variable with itself is its entropy (32 equally filled bins -> log 32)
    assert mutual_information(r1[mask], r1[mask]) == pytest.approx(np.log(32), abs=0.02)


@pytest.mark.parametrize(
    ("rotation", "layout"),
    [
        (Rotation.from_euler("x", 180, degrees=True), "RAS"),  # upside down
        (Rotation.from_euler("zyx", [140, -60, 75], degrees=True), "LPS"),
        (Rotation.from_euler("zyx", [-100, 35, 170], degrees=True), "permuted"),
    ],
    ids=["180deg-RAS", "large-LPS", "large-permuted"],
)
def test_search_pose_recovers_ground_truth(small_template, brain_points, rotation, layout, rng):
    t1w, mask = small_template
    pts, center = brain_points
    truth = rigid_about(rotation.as_matrix(), center, rng.uniform(-20, 20, 3))
    subject = pose_image(
        t1w,
        truth,
        voxel_size=4.0,
        layout=layout,
        gamma=1.5,
        gain=2.0,
        offset=30.0,
        bias=0.3,
        rng=rng,
    )
    result = search_pose(t1w, mask, subject, **FAST)
    error = displacement_error(result.matrix, truth, pts)
    assert error < 3.0, f"mean displacement {error:.2f} mm"
    assert result.score > result.header_score + 0.2
