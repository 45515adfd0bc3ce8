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
    rotate_by_angles,
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


def _centre_of_mass(v: torch.Tensor) -> torch.Tensor:
    """Physical centre of mass ``(B, 3)``: equivariant, ``com(R x) = R com(x)``."""
    n = v.shape[-1]
    ax = torch.arange(n, dtype=v.dtype) - (n - 1) / 2
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    w = v.flatten(1)
    return (w @ grid) / w.sum(1, keepdim=True)


def test_lie_derivative_of_the_centre_of_mass_is_the_generator_and_matches_finite_differences():
    """For f = centre of mass, f(rho(e^{tG}) x) = e^{tG} f(x), so L_i f(x) = G_i f(x) exactly
    (up to the grid: the derivative of the volume is a central difference, ~1% here); the JVP must equal the central finite difference of the
    same composition (the cubic resampler is C^1, so they converge)."""
    ax = torch.arange(17, dtype=torch.float64) - 8
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    centres = torch.tensor([[2.0, -1.0, 1.0], [-1.5, 2.0, -2.5]], dtype=torch.float64)
    x = torch.exp(-((p - centres[:, None, None, None]) ** 2).sum(-1) / 8.0)[:, None]
    L = lie_derivative(_centre_of_mass, x)
    G = rotation_generators()
    known = torch.einsum("ijk,bk->ibj", G, _centre_of_mass(x))
    torch.testing.assert_close(L, known, rtol=0, atol=3e-2 * known.abs().max().item())
    h = 1e-5
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = h
        fd = (
            _centre_of_mass(rotate_by_angles(x, e)) - _centre_of_mass(rotate_by_angles(x, -e))
        ) / (2 * h)
        torch.testing.assert_close(L[i], fd, rtol=1e-4, atol=1e-7)
    assert known.abs().max() > 0.5  # the blobs are off-centre: a real, non-zero derivative


def test_lie_derivative_refuses_functions_without_forward_mode():
    class NoJvp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return v.flatten(1).sum(1, keepdim=True)

        @staticmethod
        def backward(ctx, g):  # pragma: no cover - reverse mode only
            raise AssertionError

    with pytest.raises(NotImplementedError, match="forward-mode"):
        lie_derivative(NoJvp.apply, _volumes().double())


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
