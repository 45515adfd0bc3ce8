"""The SO(3) harness: band-limited inputs, spline rotations more accurate than trilinear, floor
and spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.symmetry import (
    axis_angle_matrix,
    rotate_volume,
    smooth_volumes,
    so3_invariance,
    spline_rotate,
)


def _gaussian(n: int, centre: np.ndarray) -> torch.Tensor:
    ax = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    c = torch.as_tensor(centre, dtype=torch.float64)
    return torch.exp(-((p - c) ** 2).sum(-1) / (2 * 2.0**2))[None, None]


def test_spline_rotation_matches_the_analytic_rotation_far_better_than_trilinear():
    R = axis_angle_matrix([1.0, -2.0, 0.5], 1.1)
    c = np.array([3.0, -2.0, 1.5])
    x, exact = _gaussian(21, c), _gaussian(21, R @ c)
    spline = (spline_rotate(x, R) - exact).norm() / exact.norm()
    trilinear = (rotate_volume(x, R) - exact).norm() / exact.norm()
    assert spline < 1e-3
    assert spline < 0.05 * trilinear


def test_smooth_volumes_are_band_limited_and_vanish_near_the_border():
    x = smooth_volumes(3, (17, 19, 17), seed=0)
    assert x.shape == (3, 1, 17, 19, 17) and x.dtype == torch.float64
    assert x[..., 0, :, :].abs().max() == 0 and x[..., :, -1, :].abs().max() == 0
    power = torch.fft.fftn(x[0, 0]).abs() ** 2
    k = torch.fft.fftfreq(17).abs()
    nyquist = power[k > 0.4].sum() / power.sum()
    assert nyquist < 1e-3  # white noise: about 0.2


def test_so3_invariance_units_floor_and_failure_modes():
    x = smooth_volumes(4, (15,) * 3, seed=1)
    R = [axis_angle_matrix([0.0, 1.0, 1.0], 0.9)]
    energy = lambda v: v.flatten(1).pow(4).sum(1, keepdim=True)  # noqa: E731 - invariant
    corner = lambda v: v[:, :, :8, :8, :8].flatten(1).sum(1, keepdim=True)  # noqa: E731
    inv, not_inv = so3_invariance(energy, x, R), so3_invariance(corner, x, R)
    assert inv.error < 0.03 and inv.floor < 0.03
    assert not_inv.error > 10 * inv.error and not_inv.ratio > 30
    assert inv.spread > 0 and len(inv.per_rotation) == 1
    with pytest.raises(ValueError, match="at least 2 inputs"):
        so3_invariance(energy, x[:1], R)
