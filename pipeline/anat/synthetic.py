r"""The phantom maker: posed copies of an image with known ground truth, and a small tissue phantom
(for tests and benchmarks).

- :func:`rigid_about` and :func:`random_rigid`: the rigid maps (the demo's head poses, too);
- :func:`pose_image`: an image resampled through a rigid map into a fresh grid, with a monotone
  gauge (the :mod:`pipeline.symmetry` actions :class:`~pipeline.symmetry.MonotoneContrast` and
  :class:`~pipeline.symmetry.Gain`) and a smooth bias (:class:`~pipeline.symmetry.BiasField`);
- :func:`tissue_phantom`: an ellipsoid "brain" (CSF shell, GM layer, WM core) that stands in for
  the template where a test needs no real anatomy;
- :func:`cube_points`, :func:`smooth_displacement`, :func:`sample_template`: batches of template
  volumes warped and posed onto a model's cube with one interpolation (the benchmarks' cohorts).

The template-based anatomy (warps, the planted atrophy) is the demo generator's,
:mod:`pipeline.data.demo`.

A rigid map :math:`M` (4×4, RAS mm) taken as *template → subject* defines the subject image

.. math:: S(y) = g\bigl(T(M^{-1} y)\bigr)\, b(y),

where :math:`T` is the template, :math:`g` a monotone intensity map (gauge) and :math:`b` a smooth
multiplicative bias field. A registration that recovers :math:`M` pulls :math:`S` back onto
:math:`T` (the ANTs convention: fixed → moving points).
"""

from __future__ import annotations

from typing import Literal

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pipeline.symmetry import BiasField, Gain, MonotoneContrast, reorient_image

HeaderLayout = Literal["RAS", "LPS", "permuted"]
#: axis codes of each layout's stored array ("permuted": sagittal slices first)
LAYOUT_CODES: dict[str, str] = {"RAS": "RAS", "LPS": "LPS", "permuted": "SRA"}


def random_rigid(rng: np.random.Generator, max_translation: float = 20.0) -> np.ndarray:
    """A rigid map with a rotation uniform on SO(3) and a translation uniform in ±max mm."""
    out = np.eye(4)
    out[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    out[:3, 3] = rng.uniform(-max_translation, max_translation, 3)
    return out


def rigid_about(rotation: np.ndarray, center: np.ndarray, translation: np.ndarray) -> np.ndarray:
    r"""The map :math:`x \mapsto R(x - c) + c + t` as a 4×4 matrix."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = np.asarray(center) + np.asarray(translation) - rotation @ np.asarray(center)
    return out


def pose_image(
    img: nib.spatialimages.SpatialImage,
    matrix: np.ndarray,
    *,
    voxel_size: float | None = None,
    layout: HeaderLayout = "RAS",
    gamma: float = 1.0,
    gain: float = 1.0,
    offset: float = 0.0,
    bias: float = 0.0,
    rng: np.random.Generator | None = None,
    pad_mm: float = 10.0,
) -> nib.Nifti1Image:
    """Resample ``img`` through the template→subject map ``matrix`` into a fresh grid.

    Parameters
    ----------
    img : nibabel image
        Source (template) image, RAS.
    matrix : ndarray of shape (4, 4)
        Template → subject rigid map (RAS mm).
    voxel_size : float, optional
        Isotropic voxel size of the output; default: that of ``img``.
    layout : {"RAS", "LPS", "permuted"}, default="RAS"
        How the output array is stored (:data:`LAYOUT_CODES`, applied by
        :func:`pipeline.symmetry.reorient_image`). All layouts describe the same world image.
    gamma, gain, offset : float
        Monotone gauge :math:`g(v) = \\text{gain}\\cdot v^\\gamma + \\text{offset}` on foreground voxels.
    bias : float, default=0.0
        Size of a smooth multiplicative bias field: a :class:`pipeline.symmetry.BiasField` at
        the output's world positions (fixed to the scanner, as the demo's sites' are) with
        coefficients drawn from :math:`N(0, (0.4\\,\\text{bias})^2)` (0.3 gives the demo's 0.12).
    rng : numpy Generator, optional
        Source of the bias coefficients.
    pad_mm : float, default=10.0
        Margin around the moved bounding box of the image's foreground.
    """
    data = np.asarray(img.get_fdata(dtype=np.float32))
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    vs = float(voxel_size or zooms.mean())
    nz = np.argwhere(data > 0)
    lo_i, hi_i = nz.min(0), nz.max(0)
    corners = (
        np.array(np.meshgrid(*[[lo_i[d], hi_i[d]] for d in range(3)], indexing="ij"))
        .reshape(3, -1)
        .T
    )
    world = corners @ img.affine[:3, :3].T + img.affine[:3, 3]
    moved = world @ matrix[:3, :3].T + matrix[:3, 3]
    lo = moved.min(0) - pad_mm
    hi = moved.max(0) + pad_mm
    shape = np.ceil((hi - lo) / vs).astype(int) + 1
    out_affine = np.diag([vs, vs, vs, 1.0])
    out_affine[:3, 3] = lo
    # voxel of output -> world y -> template world x = M^-1 y -> template voxel
    vox_map = np.linalg.inv(img.affine) @ np.linalg.inv(matrix) @ out_affine
    out = ndimage.affine_transform(
        data, vox_map[:3, :3], vox_map[:3, 3], output_shape=tuple(shape), order=1, mode="constant"
    )
    fg = out > 1e-3 * max(float(data.max()), 1e-12)
    vals = np.clip(out, 0, None)
    reference = max(float(vals.max()), 1e-12)  # the contrast change keeps the maximum fixed
    vals = Gain(100.0 * gain / reference)(MonotoneContrast(gamma, reference)(vals)) + offset
    if bias and rng is not None:
        ijk = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1)
        world = (out_affine[:3, :3] @ ijk + out_affine[:3, 3:4]).reshape(3, *shape)
        coefficients = rng.normal(0.0, 0.4 * bias, size=9)
        vals = vals * BiasField(tuple(coefficients)).field_at(world)
    out = np.where(fg, vals, 0.0).astype(np.float32)
    result = nib.Nifti1Image(out, out_affine)
    result.header.set_xyzt_units("mm")
    result.set_qform(out_affine, code=1)
    result.set_sform(out_affine, code=1)
    if layout != "RAS":  # storage only: pipeline.symmetry's header action, world image unchanged
        result = reorient_image(result, LAYOUT_CODES[layout])
    return result


def tissue_phantom(
    shape: tuple[int, int, int] = (20, 24, 20), shift: float = 0.0
) -> dict[str, np.ndarray]:
    """An ellipsoid "brain": CSF shell, GM layer, WM core, with T1w-like intensities.

    Parameters
    ----------
    shape : tuple of int, default=(20, 24, 20)
        Grid shape; the ellipsoid fills the cube :math:`[-1, 1]^3` spanned by the grid.
    shift : float, default=0.0
        Displacement of the ellipsoid along the first axis (in units of the half-width).

    Returns
    -------
    dict
        ``t1w`` (CSF 100, GM 400, WM 700, partial volumes in between), ``mask`` (uint8 brain),
        and the partial-volume maps ``gm``, ``wm``, ``csf`` in [0, 1].

    Examples
    --------
    >>> p = tissue_phantom((12, 12, 12))
    >>> sorted(p)
    ['csf', 'gm', 'mask', 't1w', 'wm']
    >>> bool(p["t1w"][6, 6, 6] > p["t1w"][6, 6, 1])  # WM core brighter than the shell
    True
    """
    x, y, z = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt(((x - shift) / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    wm = np.clip((0.55 - r) / 0.1 + 0.5, 0, 1)
    brain = np.clip((0.9 - r) / 0.1 + 0.5, 0, 1)
    gm = np.clip(np.clip((0.8 - r) / 0.1 + 0.5, 0, 1) - wm, 0, 1)
    csf = np.clip(brain - wm - gm, 0, 1)
    t1 = 100 * csf + 400 * gm + 700 * wm
    return {"t1w": t1, "mask": (brain > 0.5).astype(np.uint8), "gm": gm, "wm": wm, "csf": csf}


def cube_points(
    side: int, voxel_mm: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Physical positions (mm) of a ``side``³ cube of ``voxel_mm`` voxels centred on the origin,
    shape ``(side, side, side, 3)``, along the array axes.

    Examples
    --------
    >>> p = cube_points(3, 4.0)
    >>> tuple(p.shape), p[0, 0, 0].tolist(), p[1, 1, 1].tolist()
    ((3, 3, 3, 3), [-4.0, -4.0, -4.0], [0.0, 0.0, 0.0])
    """
    axis = (torch.arange(side, dtype=torch.float32, device=device) - (side - 1) / 2) * voxel_mm
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)


def smooth_displacement(
    generator: torch.Generator,
    n: int,
    side: int,
    amplitude_mm: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Smooth random displacement fields ``(n, 3, side, side, side)`` in mm: Gaussian noise of
    ``amplitude_mm`` on a 5³ grid spanning the cube, upsampled trilinearly."""
    coarse = torch.randn(n, 3, 5, 5, 5, generator=generator).to(device) * amplitude_mm
    return F.interpolate(coarse, size=(side,) * 3, mode="trilinear", align_corners=True)


def sample_template(
    source: torch.Tensor,
    centre_index: np.ndarray | torch.Tensor,
    points_mm: torch.Tensor,
    template_voxel_mm: float = 2.0,
) -> torch.Tensor:
    """Sample template-grid volumes at template points, trilinearly (zero outside).

    Parameters
    ----------
    source : Tensor of shape (B, C, X, Y, Z)
        Volumes on the template grid (axis-aligned, ``template_voxel_mm`` voxels).
    centre_index : array of shape (3,)
        Voxel index of the point that ``points_mm`` measure from (the brain centre).
    points_mm : Tensor of shape (B, ..., 3)
        Template points in mm from that centre, along the array axes (e.g. :func:`cube_points`
        moved by a pose and a :func:`smooth_displacement`).
    template_voxel_mm : float, default=2.0
        The template's voxel size.

    Returns
    -------
    Tensor of shape (B, C, ...)
    """
    shape = torch.tensor(source.shape[-3:], dtype=torch.float32, device=points_mm.device)
    c = torch.as_tensor(centre_index, dtype=torch.float32, device=points_mm.device)
    idx = c + points_mm / template_voxel_mm
    grid = (2 * idx / (shape - 1) - 1).flip(-1)
    return F.grid_sample(source, grid, align_corners=True)


def displacement_error(estimated: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Mean distance (mm) between where two fixed→moving maps send the given fixed points."""
    a = points @ estimated[:3, :3].T + estimated[:3, 3]
    b = points @ truth[:3, :3].T + truth[:3, 3]
    return float(np.linalg.norm(a - b, axis=1).mean())
