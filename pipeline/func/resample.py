r"""One-shot resampling of a BOLD run to the template: every transform composed, one interpolation.

For a template grid point :math:`x` (RAS mm) and volume :math:`t`, the sampled BOLD point is

.. math::

    w_t(x) = M_t\big(C\big(\Phi(x)\big)\big),

with :math:`\Phi` the anatomical stage's template→T1w transform (ANTs files, affine and
displacement fields, evaluated once per grid point with ``ants.apply_transforms_to_points``),
:math:`C` the T1w→BOLD-reference rigid map (coregistration) and :math:`M_t` the
reference→volume head-motion map. Volume :math:`t` is interpolated (trilinear) once at
:math:`A^{-1} w_t(x)`, :math:`A` the BOLD affine. Points outside the BOLD field of view get 0 and
are left out of the coverage mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def template_grid(
    resolution: float,
    template_resolution: int = 2,
    reference: nib.spatialimages.SpatialImage | None = None,
) -> nib.Nifti1Image:
    """An empty image on a ``resolution``-mm grid covering a template's field of view.

    The template is ``reference`` (any image on its grid, e.g. the anatomical stage's
    template-space brain mask) or, by default, MNI152NLin2009aSym at ``template_resolution``.
    The grid starts at the template's first voxel centre; its voxel axes are the template's (RAS).
    Integer multiples of the template voxel size keep voxel centres on the template lattice.
    """
    from pipeline.data.templates import load_template

    tpl = reference if reference is not None else load_template(template_resolution).t1w
    zooms = np.asarray(tpl.header.get_zooms()[:3], dtype=float)
    extent = (np.asarray(tpl.shape[:3]) - 1) * zooms
    shape = tuple(int(n) for n in np.floor(extent / resolution + 1e-6).astype(int) + 1)
    affine = tpl.affine.copy()
    affine[:3, :3] = affine[:3, :3] / zooms * resolution
    img = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)
    img.header.set_xyzt_units("mm")
    return img


def resample_to_grid(
    img: nib.spatialimages.SpatialImage, grid: nib.spatialimages.SpatialImage, order: int = 1
) -> nib.Nifti1Image:
    """Resample a 3-D image (same world space) onto ``grid`` (float32; 0 outside)."""
    vox = np.linalg.inv(img.affine) @ grid.affine
    data = ndimage.affine_transform(
        np.asarray(img.get_fdata(dtype=np.float32)),
        vox[:3, :3],
        vox[:3, 3],
        output_shape=grid.shape[:3],
        order=order,
        mode="constant",
        cval=0.0,
    )
    out = nib.Nifti1Image(data.astype(np.float32), grid.affine)
    out.header.set_xyzt_units("mm")
    return out


def grid_points(grid: nib.spatialimages.SpatialImage, mask: np.ndarray | None = None) -> np.ndarray:
    """RAS mm coordinates (N, 3) of the grid voxels (those in ``mask`` when given, in C order)."""
    idx = np.argwhere(mask) if mask is not None else np.indices(grid.shape[:3]).reshape(3, -1).T
    return idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def map_points(points: np.ndarray, transforms: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Apply ANTs transform files (fixed→moving, as for images) to RAS points (N, 3)."""
    import ants

    if not transforms:
        return np.asarray(points, dtype=float).copy()
    lps = np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])
    frame = pd.DataFrame(lps, columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, frame, [str(t) for t in transforms])
    return out[["x", "y", "z"]].to_numpy(dtype=float) * np.array([-1.0, -1.0, 1.0])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def one_shot_resample(
    bold: nib.spatialimages.SpatialImage,
    grid: nib.spatialimages.SpatialImage,
    *,
    motion: np.ndarray,
    coreg: np.ndarray,
    anat_to_template: Sequence[str | os.PathLike[str]],
    mask: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Resample a 4-D BOLD run onto a template grid with a single interpolation per volume.

    Parameters
    ----------
    bold : nibabel image, 4-D
        The (slice-timing-corrected) BOLD run in its native space.
    grid : nibabel image
        Output grid (template space), e.g. :func:`template_grid`.
    motion : ndarray of shape (T, 4, 4)
        Reference→volume head-motion maps :math:`M_t` (RAS mm).
    coreg : ndarray of shape (4, 4)
        T1w→BOLD-reference map :math:`C` (RAS mm).
    anat_to_template : sequence of path
        ANTs transform files, template→T1w points (the anatomical stage's ``anat2std_xfm``).
    mask : ndarray of bool, optional
        Only these grid voxels are computed (others are 0); default: all.
    progress : bool, default=False

    Returns
    -------
    image : nibabel.Nifti1Image
        Float32 4-D run on ``grid`` (``pixdim[4]`` kept).
    coverage : ndarray of bool
        Grid voxels that fall inside the BOLD field of view in every volume.
    """
    data = np.asarray(bold.dataobj, dtype=np.float32)
    n_vol = data.shape[3]
    if motion.shape != (n_vol, 4, 4):
        raise ValueError(f"motion has shape {motion.shape}, expected ({n_vol}, 4, 4)")
    select = np.ones(grid.shape[:3], dtype=bool) if mask is None else np.asarray(mask, bool)
    points = map_points(grid_points(grid, select), anat_to_template)
    ref_points = _apply(np.asarray(coreg, float), points)
    inv_bold = np.linalg.inv(bold.affine)
    shape = np.array(data.shape[:3])
    out = np.zeros((int(select.sum()), n_vol), dtype=np.float32)
    inside_all = np.ones(len(points), dtype=bool)
    for t in tqdm(range(n_vol), desc="one-shot resampling", disable=not progress):
        vox = _apply(inv_bold @ motion[t], ref_points)
        inside_all &= np.all((vox >= -0.5) & (vox <= shape - 0.5), axis=1)
        out[:, t] = ndimage.map_coordinates(data[..., t], vox.T, order=1, mode="constant", cval=0.0)
    full = np.zeros((*grid.shape[:3], n_vol), dtype=np.float32)
    full[select] = out
    coverage = np.zeros(grid.shape[:3], dtype=bool)
    coverage[select] = inside_all
    img = nib.Nifti1Image(full, grid.affine)
    img.header.set_xyzt_units("mm", "sec")
    zooms = bold.header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 else 1.0
    img.header.set_zooms((*grid.header.get_zooms()[:3], tr))
    return img, coverage
