"""Grids, interpolation and warps of the demo: stored scanner grids, world/voxel coordinates,
trilinear sampling and smooth diffeomorphisms :math:`\\varphi = \\exp(v)` (scaling and squaring)."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from pipeline.data.templates import Template


def stored_grid(
    fov_mm: np.ndarray, voxel_mm: np.ndarray, axcodes: tuple[str, str, str]
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a grid centred on the scanner origin, stored with axis codes ``axcodes``.

    The RAS grid has ``voxel_mm`` along R, A, S; storing it as ``axcodes`` permutes/flips the voxel
    axes but keeps every voxel's world position.
    """
    shape_ras = np.maximum(np.round(fov_mm / voxel_mm).astype(int), 2)
    affine_ras = np.diag([*voxel_mm, 1.0])
    affine_ras[:3, 3] = -(shape_ras - 1) / 2.0 * voxel_mm
    transform = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(axcodes))
    affine = affine_ras @ ornt.inv_ornt_aff(transform, tuple(shape_ras))
    # the stored shape: axis j of the stored array is RAS axis k where transform[k, 0] == j
    shape = [0, 0, 0]
    for k, (j, _) in enumerate(transform):
        shape[int(j)] = int(shape_ras[k])
    return tuple(shape), affine


def voxel_world_coords(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel, shape ``(3, *shape)``."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return xyz.reshape(3, *shape)


def velocity_field(
    rng: np.random.Generator, template: Template, amplitude_mm: float, spacing_mm: float = 16.0
) -> nib.Nifti1Image:
    """A random stationary velocity field on a coarse grid covering the template (mm, RAS)."""
    shape_t = np.array(template.t1w.shape)
    zooms = np.array(template.t1w.header.get_zooms()[:3])
    coarse_shape = tuple(int(n) for n in np.ceil(shape_t * zooms / spacing_mm).astype(int) + 1)
    vel = rng.normal(0.0, amplitude_mm, size=(*coarse_shape, 3))
    vel = ndimage.gaussian_filter(vel, sigma=(0.7, 0.7, 0.7, 0)) * 2.0
    affine = template.t1w.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag(spacing_mm / zooms)
    return nib.Nifti1Image(vel.astype(np.float32), affine)


def trilinear(volumes: np.ndarray, vox: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Trilinear interpolation of ``volumes`` (C, X, Y, Z) at voxel coordinates ``vox`` (3, ...).

    Uses :func:`torch.nn.functional.grid_sample` (multi-channel, multi-threaded), in the dtype of
    ``volumes``. Points outside the grid get ``fill`` (``"border"``: the nearest edge value).
    Returns an array of shape ``(C, *vox.shape[1:])``.
    """
    import torch

    vols = torch.from_numpy(np.ascontiguousarray(volumes))
    size = torch.tensor(volumes.shape[1:][::-1], dtype=vols.dtype)
    pts = torch.from_numpy(np.ascontiguousarray(vox.reshape(3, -1)[::-1].T)).to(vols.dtype)
    grid = (2.0 * pts / (size - 1) - 1.0).reshape(1, 1, 1, -1, 3)
    padding = "border" if fill == "border" else "zeros"
    out = torch.nn.functional.grid_sample(
        vols[None], grid, mode="bilinear", padding_mode=padding, align_corners=True
    )[0, :, 0, 0]
    return out.numpy().reshape(volumes.shape[0], *vox.shape[1:])


def world_to_voxel(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates (3, ...) of world points (3, ...) for a grid with ``affine``."""
    inv = np.linalg.inv(affine)
    flat = points_mm.reshape(3, -1)
    return (inv[:3, :3] @ flat + inv[:3, 3:4]).reshape(points_mm.shape)


@dataclass(frozen=True)
class Displacement:
    """A displacement field ``u`` (mm, shape (3, X, Y, Z)) on a grid with ``affine``: :math:`\\varphi(x) = x + u(x)`."""

    field: np.ndarray
    affine: np.ndarray


def coarse_grid(image: nib.Nifti1Image, factor: int = 2) -> nib.Nifti1Image:
    """An empty image covering ``image``'s field of view with voxels ``factor`` times larger."""
    shape = tuple(int(np.ceil(n / factor)) for n in image.shape[:3])
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] * factor
    return nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)


def displacement_from_velocity(
    velocity: nib.Nifti1Image, grid: nib.Nifti1Image, sign: float = 1.0, steps: int = 6
) -> Displacement:
    """Displacement field of :math:`\\exp(\\pm v)` on ``grid`` (mm).

    The velocity is interpolated trilinearly onto the grid and integrated by scaling and squaring:
    :math:`u \\leftarrow u + u\\circ(\\mathrm{id}+u)`, ``steps`` times, from :math:`v/2^{steps}`.
    """
    shape = grid.shape[:3]
    world = voxel_world_coords(shape, grid.affine)
    vel = np.moveaxis(np.asarray(velocity.dataobj, dtype=np.float64), -1, 0)
    u = trilinear(vel, world_to_voxel(world, velocity.affine), fill="border")
    u = sign * u / 2.0**steps
    for _ in range(steps):
        u = u + trilinear(u, world_to_voxel(world + u, grid.affine), fill="border")
    return Displacement(u, grid.affine.copy())


def warp_points(points_mm: np.ndarray, displacement: Displacement) -> np.ndarray:
    """Apply :math:`\\varphi(x) = x + u(x)` to points (3, ...)."""
    disp = trilinear(
        displacement.field, world_to_voxel(points_mm, displacement.affine), fill="border"
    )
    return points_mm + disp


def set_scanner_codes(img: nib.Nifti1Image) -> None:
    """Mark the image's affine as scanner coordinates (qform and sform code 1), units mm and s."""
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
