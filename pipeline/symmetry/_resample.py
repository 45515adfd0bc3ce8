r"""Rotations of volumes in physical space, with resampling.

For a volume on an axis-aligned grid with voxel sizes :math:`S = \operatorname{diag}(s)` and
centre :math:`c` (in index units), the physical position of index :math:`v` is
:math:`p = S(v - c)`. Rotating the volume by :math:`R \in SO(3)` about its centre gives

.. math::  (R \cdot x)(v) = x\big(S^{-1} R^\top S (v - c) + c\big),

evaluated by trilinear interpolation (:func:`torch.nn.functional.grid_sample`, differentiable,
so Lie derivatives can be taken by a JVP through it). Points outside the grid read as zero.
:func:`rotate_image` does the same for a nibabel image about a world (RAS, mm) point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["rotate_volume", "rotate_image", "Rotation"]


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
    mode : {"bilinear", "nearest"}, default="bilinear"
        Interpolation ("bilinear" is trilinear on volumes).
    """
    if x.ndim != 5:
        raise ValueError(f"rotate_volume expects (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    Rt = torch.as_tensor(np.asarray(R) if not isinstance(R, torch.Tensor) else R)
    Rt = Rt.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
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
