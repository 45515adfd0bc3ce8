r"""Lie derivatives of functions of volumes along the rotation generators (Gruver et al. 2022).

For :math:`f` on volumes and the generators :math:`G_1, G_2, G_3` of :math:`\mathfrak{so}(3)`
(:math:`(G_i)_{jk} = -\epsilon_{ijk}`), the Lie derivative is

.. math::

    (L_i f)(x) = \frac{d}{dt}\Big|_{t=0} f\big(\rho(e^{t G_i})\, x\big),

where :math:`\rho(R)` rotates the volume about its grid centre by cubic convolution
(:func:`pipeline.symmetry.cubic_resample`, written in plain torch ops). The derivative is taken
in one forward-mode pass, :func:`torch.func.jvp` of :math:`t \mapsto f(\rho(e^{tG_i})x)`: the
tangent flows from the rotation angle through the matrix exponential, the sample positions, the
resampler's weights and then the model. Keys' cubic kernel is :math:`C^1`, so the derivative at
:math:`t = 0` (where the samples sit on the grid nodes) exists and equals the model's JVP along
the central-difference derivative of the volume; finite differences of the same composition
converge to it (tested). No reverse-mode fallback: a function with an operation that has no
forward-mode formula raises. :math:`L f = 0` for every :math:`x` iff :math:`f` is invariant to
(infinitesimal) rotations; :math:`\lVert L f(x)\rVert` measures local symmetry breaking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipeline.symmetry._resample import cubic_resample, rotated_positions

__all__ = ["lie_derivative", "lie_derivative_norm", "rotate_by_angles", "rotation_generators"]


def rotation_generators(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""The basis :math:`G_i` of :math:`\mathfrak{so}(3)`, shape ``(3, 3, 3)``, with
    :math:`e^{\theta G_i}` the rotation by :math:`\theta` about axis :math:`i` (right hand)."""
    G = torch.zeros(3, 3, 3, dtype=dtype)
    for i, (j, k) in enumerate(((1, 2), (2, 0), (0, 1))):
        G[i, k, j] = 1.0
        G[i, j, k] = -1.0
    return G


def rotate_by_angles(
    x: torch.Tensor, t: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    r"""``x`` rotated by :math:`\exp(\sum_i t_i G_i)` about the grid centre (cubic convolution),
    differentiable in ``t`` (shape ``(3,)``) in reverse and forward mode."""
    G = rotation_generators(t.dtype).to(t.device)
    R = torch.linalg.matrix_exp(torch.einsum("i,ijk->jk", t, G))
    return cubic_resample(x, rotated_positions(R, x.shape[-3:], spacing))


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
    dtype = x.dtype if x.is_floating_point() else torch.float64
    x = x.to(dtype)
    t0 = torch.zeros(3, dtype=dtype, device=x.device)

    def along(t: torch.Tensor) -> torch.Tensor:
        return f(rotate_by_angles(x, t, spacing))

    out = []
    for i in range(3):
        e = torch.zeros_like(t0)
        e[i] = 1.0
        try:
            _, d = torch.func.jvp(along, (t0,), (e,))
        except (NotImplementedError, RuntimeError) as exc:
            raise NotImplementedError(
                "lie_derivative needs f to support forward-mode autodiff (torch.func.jvp); "
                f"it failed with: {exc}"
            ) from exc
        out.append(d.detach())
    return torch.stack(out)


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
