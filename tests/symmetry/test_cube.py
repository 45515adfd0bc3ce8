"""The 24 rotations of the cube: group axioms and exact action on arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.symmetry import (
    CubeRotation,
    cube_multiplication_table,
    cube_rotations,
    rotate_cube,
    rotate_volume,
)


def test_24_distinct_proper_rotations():
    G = cube_rotations()
    assert len(G) == 24 and len(set(G)) == 24
    assert G[0].is_identity
    for g in G:
        R = g.matrix
        np.testing.assert_allclose(R @ R.T, np.eye(3))
        assert round(np.linalg.det(R)) == 1


def test_multiplication_table_is_a_latin_square():
    T = cube_multiplication_table()
    for row in (*T, *T.T):
        assert sorted(row) == list(range(24))


def test_action_composes(rng):
    x = rng.standard_normal((2, 5, 5, 5))
    G = cube_rotations()
    for g, h in [(G[3], G[7]), (G[11], G[20]), (G[5], G[5])]:
        np.testing.assert_array_equal(rotate_cube(rotate_cube(x, h), g), rotate_cube(x, g @ h))
        np.testing.assert_array_equal(rotate_cube(rotate_cube(x, g), g.inverse()), x)


def test_exact_action_matches_resampled_rotation():
    x = torch.randn(1, 2, 7, 7, 7)
    for g in cube_rotations():
        exact = rotate_cube(x, g)
        resampled = rotate_volume(x, g.matrix)
        assert torch.allclose(exact, resampled, atol=1e-5)


def test_from_matrix_rejects_reflection():
    with pytest.raises(ValueError, match="not a rotation of the cube"):
        CubeRotation.from_matrix(np.diag([-1.0, 1.0, 1.0]))
