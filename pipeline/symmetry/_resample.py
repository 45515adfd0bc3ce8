r"""Rotations of volumes in physical space, with resampling.

For a volume on an axis-aligned grid with voxel sizes :math:`S = \operatorname{diag}(s)` and
centre :math:`c` (in index units), the physical position of index :math:`v` is
:math:`p = S(v - c)`. Rotating the volume by :math:`R \in SO(3)` about its centre gives

.. math::  (R \cdot x)(v) = x\big(S^{-1} R^\top S (v - c) + c\big),

evaluated by trilinear interpolation (:func:`torch.nn.functional.grid_sample`, differentiable
in reverse mode) or, with ``mode="cubic"``, by Keys' cubic convolution written in plain torch
ops (:func:`cubic_resample`), which is :math:`C^1` in the sample positions and supports forward-
mode differentiation (:func:`torch.func.jvp`): the Lie derivatives of :mod:`._lie` go through it.
Points outside the grid read as zero.
:func:`rotate_image` does the same for a nibabel image about a world (RAS, mm) point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["cubic_resample", "rotate_volume", "rotate_image", "Rotation"]


def _sampling_grid(
    R: torch.Tensor, shape: Sequence[int], spacing: Sequence[float], dtype: torch.dtype, device
) -> torch.Tensor:
    """Normalised ``grid_sample`` grid (``(B, X, Y, Z, 3)``, last axis ordered (Z, Y, X)) for ``R``
    ``(B, 3, 3)``."""
    n = torch.as_tensor(shape, dtype=dtype, device=device)
    s = torch.as_tensor(spacing, dtype=dtype, device=device)
    axes = [torch.arange(k, dtype=dtype, device=device) - (k - 1) / 2 for k in shape]
    v = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # centred index coordinates
    p = v * s  # physical
    src = torch.einsum("bji,xyzj->bxyzi", R.to(dtype), p) / s  # R^T p, back to index units
    norm = src / ((n - 1).clamp(min=1) / 2)
    return norm.flip(-1)


def _keys_weights(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keys (1981) cubic-convolution weights (a = -1/2) of the taps at offsets -1, 0, 1, 2."""
    t2, t3 = t * t, t * t * t
    return (
        -0.5 * t3 + t2 - 0.5 * t,
        1.5 * t3 - 2.5 * t2 + 1.0,
        -1.5 * t3 + 2.0 * t2 + 0.5 * t,
        0.5 * t3 - 0.5 * t2,
    )


def cubic_resample(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    r"""Sample ``x`` ``(B, C, X, Y, Z)`` at index positions ``src`` ``(..., 3)`` by cubic convolution.

    .. math::

        y(q) = \sum_{a,b,c \in \{-1,0,1,2\}} w_a(t_1)\, w_b(t_2)\, w_c(t_3)\,
        x(\lfloor q \rfloor + (a, b, c)), \qquad t = q - \lfloor q \rfloor,

    with Keys' weights (:math:`a = -1/2`): exact for quadratics, interpolating, and
    :math:`C^1` in :math:`q` (at a node its derivative is the central difference). Taps outside
    the grid read as zero. Only gathers and polynomials: differentiable in both ``x`` and
    ``src``, in reverse *and* forward mode (:func:`torch.func.jvp`).

    Returns
    -------
    torch.Tensor
        Shape ``(B, C, *src.shape[:-1])``.
    """
    if x.ndim != 5 or src.shape[-1] != 3:
        raise ValueError(
            f"cubic_resample expects x (B, C, X, Y, Z) and src (..., 3); got {tuple(x.shape)} "
            f"and {tuple(src.shape)}"
        )
    sizes = x.shape[-3:]
    out_shape = src.shape[:-1]
    q = src.reshape(-1, 3)
    base = torch.floor(q.detach())
    t = q - base
    base = base.long()
    w = [_keys_weights(t[:, i]) for i in range(3)]
    flat = x.reshape(*x.shape[:2], -1)
    y = None
    for a in range(4):
        ia = base[:, 0] + a - 1
        oka = (ia >= 0) & (ia < sizes[0])
        for b in range(4):
            ib = base[:, 1] + b - 1
            okb = oka & (ib >= 0) & (ib < sizes[1])
            wab = w[0][a] * w[1][b]
            for c in range(4):
                ic = base[:, 2] + c - 1
                ok = okb & (ic >= 0) & (ic < sizes[2])
                idx = ((ia * sizes[1] + ib) * sizes[2] + ic).clamp(0, flat.shape[-1] - 1)
                term = flat[..., idx] * torch.where(ok, wab * w[2][c], 0.0).to(x.dtype)
                y = term if y is None else y + term
    return y.reshape(*x.shape[:2], *out_shape)


def rotated_positions(
    R: torch.Tensor, shape: Sequence[int], spacing: Sequence[float]
) -> torch.Tensor:
    r"""Index positions :math:`S^{-1} R^\top S (v - c) + c` read by the rotation ``R`` ``(3, 3)``
    of a grid of ``shape`` (shape ``(X, Y, Z, 3)``, differentiable in ``R``)."""
    dtype, device = R.dtype, R.device
    s = torch.as_tensor(list(spacing), dtype=dtype, device=device)
    axes = [torch.arange(k, dtype=dtype, device=device) - (k - 1) / 2 for k in shape]
    v = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    centre = torch.as_tensor([(k - 1) / 2 for k in shape], dtype=dtype, device=device)
    return torch.einsum("ji,xyzj->xyzi", R, v * s) / s + centre


def rotate_volume(
    x: torch.Tensor,
    R: np.ndarray | torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    mode: str = "bilinear",
) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, C, X, Y, Z)`` about the grid centre by ``R`` (``(3, 3)`` or
    ``(B, 3, 3)``).

    Parameters
    ----------
    x : torch.Tensor
        Batch of volumes, array axes (X, Y, Z) with voxel sizes ``spacing``.
    R : array-like
        Rotation(s) acting on physical coordinates along the array axes.
    spacing : sequence of float, default=(1, 1, 1)
        Voxel sizes (mm) along the three array axes.
    mode : {"bilinear", "nearest", "cubic"}, default="bilinear"
        Interpolation ("bilinear" is trilinear on volumes; "cubic" is :func:`cubic_resample`,
        forward-mode differentiable).
    """
    if x.ndim != 5:
        raise ValueError(f"rotate_volume expects (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    Rt = torch.as_tensor(np.asarray(R) if not isinstance(R, torch.Tensor) else R)
    Rt = Rt.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    if mode == "cubic":
        if Rt.ndim == 2:
            return cubic_resample(x, rotated_positions(Rt, x.shape[-3:], spacing))
        return torch.cat(
            [
                cubic_resample(x[i : i + 1], rotated_positions(Rt[i], x.shape[-3:], spacing))
                for i in range(x.shape[0])
            ]
        )
    if Rt.ndim == 2:
        Rt = Rt.expand(x.shape[0], 3, 3)
    grid = _sampling_grid(Rt, x.shape[-3:], spacing, Rt.dtype, x.device)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)


@dataclass(frozen=True)
class Rotation:
    """The action of a rotation ``R`` on batches of volumes by resampling (see
    :func:`rotate_volume`).

    ``Rotation(R)(x)`` rotates; ``Rotation(R).inverse()`` is the rotation by ``R.T``, so
    ``g.inverse()(g(x))`` differs from ``x`` only by the resampling error (the "floor").
    """

    matrix: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mode: str = field(default="bilinear")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return rotate_volume(x, self.matrix, self.spacing, self.mode)

    def inverse(self) -> Rotation:
        return Rotation(np.swapaxes(np.asarray(self.matrix), -1, -2), self.spacing, self.mode)


def rotate_image(
    img: nib.spatialimages.SpatialImage,
    R: np.ndarray,
    center: Sequence[float] | None = None,
    order: int = 1,
) -> nib.Nifti1Image:
    r"""Rotate an image's content by ``R`` (world RAS coordinates) about ``center`` (mm), on the
    same grid.

    The output satisfies :math:`y(p) = x(R^\top (p - c) + c)` for world points :math:`p`;
    ``center`` defaults to the world position of the grid centre.
    """
    from scipy import ndimage

    A = np.asarray(img.affine, dtype=float)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    if center is None:
        center = A[:3, :3] @ ((np.asarray(data.shape[:3]) - 1) / 2) + A[:3, 3]
    c = np.asarray(center, dtype=float)
    Tinv = np.eye(4)
    Tinv[:3, :3] = np.asarray(R).T
    Tinv[:3, 3] = c - np.asarray(R).T @ c
    M = np.linalg.inv(A) @ Tinv @ A  # output index -> input index
    out = ndimage.affine_transform(data, M[:3, :3], offset=M[:3, 3], order=order, mode="constant")
    res = nib.Nifti1Image(out.astype(np.float32), A)
    res.header.set_xyzt_units("mm")
    return res
