r"""Lie derivatives of functions of volumes along the rotation generators (Gruver et al. 2022).

For :math:`f` on volumes and the generators :math:`G_1, G_2, G_3` of :math:`\mathfrak{so}(3)`
(:math:`(G_i)_{jk} = -\epsilon_{ijk}`), the Lie derivative is

.. math::

    (L_i f)(x) = \frac{d}{dt}\Big|_{t=0} f\big(\rho(e^{t G_i})\, x\big),

where :math:`\rho(R)` rotates the volume about its grid centre by trilinear resampling
(:func:`torch.nn.functional.grid_sample`). It is taken exactly by a Jacobian–vector product
through the resampler (the volume's tangent through ``grid_sample``, then forward mode through :math:`f` with
:func:`torch.func.jvp`),
not by finite differences, which do not converge on resampled grids. Trilinear interpolation is
not differentiable at the grid nodes (where :math:`t = 0` samples), so the JVP is taken a hair
(:math:`10^{-3}` voxel) off the nodes on either side and the two one-sided derivatives are
averaged: the derivative of the volume is then its central difference. :math:`L f = 0` for every
:math:`x` iff :math:`f` is invariant to (infinitesimal) rotations; :math:`\lVert L f(x)\rVert`
measures local symmetry breaking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["rotation_generators", "lie_derivative", "lie_derivative_norm"]

# trilinear interpolation has kinks at the grid nodes (t = 0): read just off them on both sides
_NODE_OFFSET = 1e-3


def rotation_generators(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""The basis :math:`G_i` of :math:`\mathfrak{so}(3)`, shape ``(3, 3, 3)``, with
    :math:`e^{\theta G_i}` the rotation by :math:`\theta` about axis :math:`i` (right hand)."""
    G = torch.zeros(3, 3, 3, dtype=dtype)
    for i, (j, k) in enumerate(((1, 2), (2, 0), (0, 1))):
        G[i, k, j] = 1.0
        G[i, j, k] = -1.0
    return G


def _rotated(
    x: torch.Tensor, t: torch.Tensor, spacing: Sequence[float], offset: float = 0.0
) -> torch.Tensor:
    """``x`` rotated by :math:`\\exp(\\sum_i t_i G_i)`, differentiably in ``t``, read ``offset``
    voxels off the rotated grid points along every axis."""
    G = rotation_generators(t.dtype).to(t.device)
    R = torch.linalg.matrix_exp(torch.einsum("i,ijk->jk", t, G))
    shape = x.shape[-3:]
    n = torch.as_tensor(list(shape), dtype=t.dtype, device=t.device)
    s = torch.as_tensor(list(spacing), dtype=t.dtype, device=t.device)
    axes = [torch.arange(k, dtype=t.dtype, device=t.device) - (k - 1) / 2 for k in shape]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) * s
    src = torch.einsum("ji,xyzj->xyzi", R, p) / s + offset  # R^T p, index units
    grid = (src / ((n - 1).clamp(min=1) / 2)).flip(-1)[None].expand(x.shape[0], -1, -1, -1, -1)
    return F.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
    )


def lie_derivative(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    r"""Lie derivatives :math:`L_i f(x)` along the three rotation generators.

    Parameters
    ----------
    f : callable
        Maps ``(B, C, X, Y, Z)`` to ``(B, ...)`` sample by sample (put models in ``eval()`` mode so
        batch statistics do not couple samples), e.g. any model from
        :func:`pipeline.models.build_model` or ``lambda x: vae.encode(x)[0]``.
    x : torch.Tensor
        Batch of volumes ``(B, C, X, Y, Z)``.
    spacing : sequence of float, default=(1, 1, 1)
        Voxel sizes (mm), so that rotations are physical.

    Returns
    -------
    torch.Tensor
        Shape ``(3, B, ...)``: :math:`L_i f(x)` for each generator :math:`i`.
    """
    if x.ndim != 5:
        raise ValueError(f"lie_derivative expects (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    x = x.detach()
    dtype = x.dtype if x.is_floating_point() else torch.float32
    t0 = torch.zeros(3, dtype=dtype, device=x.device)

    out = []
    for i in range(3):
        e = torch.zeros_like(t0)
        e[i] = 1.0
        d = sum(_jvp(f, x, t0, e, spacing, sign * _NODE_OFFSET) for sign in (1.0, -1.0))
        out.append(d / 2)
    return torch.stack(out)


def _jvp(f, x, t0, e, spacing, offset: float) -> torch.Tensor:
    """:math:`J_f(\\rho_t x)\\,\\partial_t \\rho_t x` by the chain rule: the volume's tangent
    through the resampler (``grid_sampler_3d`` has no forward-mode formula: reverse over reverse),
    then forward mode through ``f`` (reverse over reverse where ``f`` has an op without one)."""
    xr, dx = torch.autograd.functional.jvp(lambda t: _rotated(x, t, spacing, offset), (t0,), (e,))
    try:
        _, d = torch.func.jvp(f, (xr,), (dx,))
    except (RuntimeError, NotImplementedError):
        _, d = torch.autograd.functional.jvp(f, (xr,), (dx,))
    return d.detach()


def lie_derivative_norm(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    relative: bool = True,
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""Per-sample :math:`\big(\sum_i \lVert L_i f(x)\rVert^2\big)^{1/2}`, divided by
    :math:`\lVert f(x)\rVert` when ``relative`` (units: per radian). Shape ``(B,)``."""
    L = lie_derivative(f, x, spacing)
    norm = L.flatten(2).pow(2).sum(dim=(0, 2)).sqrt()
    if not relative:
        return norm
    with torch.no_grad():
        fx = f(x)
    return norm / (fx.flatten(1).norm(dim=1) + eps)
