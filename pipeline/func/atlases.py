"""Atlases that work offline and ROI time-series extraction.

Coordinate atlases shipped with nilearn (Power 2011: 264 ROIs, Dosenbach 2010: 160, Seitzman 2018:
300) are used as spheres (:class:`nilearn.maskers.NiftiSpheresMasker`); any labelled NIfTI atlas
in template space goes through :class:`nilearn.maskers.NiftiLabelsMasker`; a TSV of coordinates
(``x``, ``y``, ``z`` in MNI mm, optional ``region``) is a user coordinate atlas.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

#: built-in coordinate atlases: config name → (BIDS atlas label, nilearn fetcher)
COORDINATE_ATLASES = {
    "power2011": ("Power2011", "fetch_coords_power_2011"),
    "dosenbach2010": ("Dosenbach2010", "fetch_coords_dosenbach_2010"),
    "seitzman2018": ("Seitzman2018", "fetch_coords_seitzman_2018"),
}


@dataclass(frozen=True)
class Atlas:
    """A set of ROIs: either sphere centres (MNI mm) or a labelled image."""

    label: str  # BIDS ``atlas-`` value
    names: tuple[str, ...]
    coords: np.ndarray | None = None
    labels_img: str | None = None


def load_coordinate_atlas(name: str) -> Atlas:
    """One of :data:`COORDINATE_ATLASES` (packaged with nilearn: no network)."""
    from nilearn import datasets

    if name not in COORDINATE_ATLASES:
        raise ValueError(f"unknown atlas {name!r}; built-in: {sorted(COORDINATE_ATLASES)}")
    label, fetcher = COORDINATE_ATLASES[name]
    bunch = getattr(datasets, fetcher)()
    rois = bunch.rois
    coords = rois[["x", "y", "z"]].to_numpy(dtype=float)
    names = tuple(f"roi{j + 1:03d}" for j in range(len(coords)))
    return Atlas(label, names, coords=coords)


def load_coordinate_file(label: str, path: str | os.PathLike[str]) -> Atlas:
    """A coordinate atlas from a TSV with columns ``x``, ``y``, ``z`` (and optionally ``region``)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read coordinate atlas ({exc})", path) from exc
    if not {"x", "y", "z"} <= set(table.columns):
        raise InputError("coordinate atlas needs columns x, y, z", path)
    names = (
        tuple(str(v) for v in table["region"])
        if "region" in table.columns
        else tuple(f"roi{j + 1:03d}" for j in range(len(table)))
    )
    return Atlas(label, names, coords=table[["x", "y", "z"]].to_numpy(dtype=float))


def load_label_atlas(label: str, path: str | os.PathLike[str]) -> Atlas:
    """A labelled NIfTI atlas (integer labels, 0 = background)."""
    from pipeline.io import check_image

    img = check_image(path, ndim=3)
    values = np.unique(np.asarray(img.dataobj))
    values = values[values != 0]
    if values.size == 0:
        raise InputError("labelled atlas has no non-zero label", path)
    names = tuple(f"label{int(v)}" for v in values)
    return Atlas(label, names, labels_img=str(path))


def sphere_members(
    coords: np.ndarray, mask: nib.spatialimages.SpatialImage, radius_mm: float
) -> list[np.ndarray]:
    """Indices (into the C-ordered mask voxels) of the mask voxels within ``radius_mm`` of each centre.

    Same rule as :class:`nilearn.maskers.NiftiSpheresMasker`: voxel centres at distance
    ≤ radius, plus the voxel nearest to the centre when it lies in the mask.
    """
    mask_data = np.asarray(mask.dataobj) > 0
    idx = np.argwhere(mask_data)
    pts = idx @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    lookup = -np.ones(mask_data.shape, dtype=np.int64)
    lookup[mask_data] = np.arange(len(idx))
    inv = np.linalg.inv(mask.affine)
    coords = np.asarray(coords, dtype=float)
    if len(idx) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in coords]
    balls = cKDTree(pts).query_ball_point(coords, radius_mm + 1e-9)
    members = []
    for c, ball in zip(coords, balls, strict=True):
        inside = np.asarray(ball, dtype=np.int64)
        nearest = np.rint(inv[:3, :3] @ c + inv[:3, 3]).astype(int)
        if np.all((nearest >= 0) & (nearest < mask_data.shape)):
            j = lookup[tuple(nearest)]
            if j >= 0 and j not in inside:
                inside = np.append(inside, j)
        members.append(np.sort(inside))
    return members


def roi_timeseries(
    bold: nib.Nifti1Image, atlas: Atlas, mask: nib.Nifti1Image, radius_mm: float = 5.0
) -> pd.DataFrame:
    """Mean time series ``(T, ROIs)`` of each ROI (voxels inside ``mask`` only).

    Spheres are averaged directly (:func:`sphere_members`, equal to
    :class:`~nilearn.maskers.NiftiSpheresMasker` with ``mask_img``, and much faster for hundreds
    of spheres); labelled atlases go through :class:`~nilearn.maskers.NiftiLabelsMasker`. ROIs
    without a mask voxel give a column of NaN (and a logged warning).
    """
    from nilearn.maskers import NiftiLabelsMasker

    if atlas.coords is not None:
        mask_data = np.asarray(mask.dataobj) > 0
        voxels = np.asarray(bold.dataobj, dtype=np.float32)[mask_data]  # (V, T)
        members = sphere_members(atlas.coords, mask, radius_mm)
        out = np.full((bold.shape[3], len(members)), np.nan)
        for j, m in enumerate(members):
            if m.size:
                out[:, j] = voxels[m].mean(axis=0)
        empty = sum(m.size == 0 for m in members)
        if empty:
            logger.warning(
                "atlas %s: %d of %d spheres outside the BOLD mask", atlas.label, empty, len(members)
            )
        return pd.DataFrame(out, columns=list(atlas.names))
    masker = NiftiLabelsMasker(atlas.labels_img, mask_img=mask, resampling_target="data")
    values = masker.fit_transform(bold)
    ids = [v for k, v in masker.region_ids_.items() if k != "background"]
    table = pd.DataFrame(values, columns=[f"label{int(v)}" for v in ids])
    return table.reindex(columns=list(atlas.names))
