"""Lie derivatives along the rotation generators, by JVP through the resampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.symmetry import (
    cube_rotations,
    lie_derivative,
    lie_derivative_norm,
    rotate_volume,
    rotation_generators,
)

N = 13


def _volumes() -> torch.Tensor:
    ax = torch.arange(N, dtype=torch.float32) - (N - 1) / 2
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    a = torch.exp(-((p - torch.tensor([2.0, -1.0, 1.0])) ** 2).sum(-1) / 5.0)
    b = 0.6 * torch.exp(-((p - torch.tensor([-2.0, 2.0, 0.0])) ** 2).sum(-1) / 3.0)
    return torch.stack([a + b, a - 0.5 * b.flip(-1)])[:, None]


def _centred(f):
    return lambda v: f(v) - f(torch.zeros_like(v))


def _isotropic(v: torch.Tensor) -> torch.Tensor:
    """Isotropic Gaussian filter, pointwise nonlinearity, global pooling: SO(3)-invariant."""
    ax = torch.arange(5, dtype=v.dtype) - 2
    r2 = sum(g**2 for g in torch.meshgrid(ax, ax, ax, indexing="ij"))
    h = torch.nn.functional.conv3d(v, torch.exp(-r2 / 2.0)[None, None], padding=2)
    return torch.stack(
        [torch.relu(h - 0.3).flatten(1).mean(1), torch.tanh(h).flatten(1).mean(1)], 1
    )


def test_generators_exponentiate_to_axis_rotations():
    G = rotation_generators()
    Rz = torch.linalg.matrix_exp(G[2] * np.pi / 2)
    np.testing.assert_allclose(Rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(G.transpose(1, 2), -G)


def test_lie_derivative_matches_a_small_rotation_of_a_linear_function():
    """For a linear f, f(rot_t x) is a linear function of the resampled volume: compare the JVP
    with a symmetric finite difference of a smooth blob (where the two agree)."""
    x = _volumes()[:1].double()
    w = torch.randn(x[0].numel(), dtype=torch.float64)
    f = lambda v: (v.flatten(1) @ w)[:, None]  # noqa: E731
    L = lie_derivative(f, x)
    t = 1e-2
    R = lambda s: torch.linalg.matrix_exp(s * rotation_generators()[0])  # noqa: E731
    fd = (f(rotate_volume(x, R(t))) - f(rotate_volume(x, R(-t)))) / (2 * t)
    assert L[0].item() == pytest.approx(fd.item(), rel=0.15)


def test_lie_derivative_large_for_cnn_small_for_invariant_models():
    x = _volumes()
    cnn = build_model("cnn", 1, 3).eval()
    cnn_norm = lie_derivative_norm(_centred(cnn), x)
    iso_norm = lie_derivative_norm(_isotropic, x)
    assert cnn_norm.min() > 0.05
    assert iso_norm.max() < 0.1 * cnn_norm.min()
    # averaging over the cube group reduces, but does not remove, the continuous symmetry breaking
    avg = lambda v: torch.stack([cnn(g(v)) for g in cube_rotations()]).mean(0)  # noqa: E731
    assert lie_derivative_norm(_centred(avg), x).max() < 0.5 * cnn_norm.min()


def test_lie_derivative_shape_and_input_check():
    x = _volumes()
    L = lie_derivative(lambda v: v.flatten(1)[:, :4], x)
    assert L.shape == (3, 2, 4)
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        lie_derivative(lambda v: v, x[0])
