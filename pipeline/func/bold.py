"""BOLD inputs: sidecar metadata (BIDS inheritance), validation, non-steady-state volumes.

Every problem with an input raises a one-line :class:`~pipeline.errors.ImageError` (the image) or
:class:`~pipeline.errors.InputError` (the metadata) naming the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.errors import ImageError, InputError
from pipeline.io import check_image, read_json

logger = logging.getLogger(__name__)

#: relative tolerance between the header's TR and the sidecar's RepetitionTime
TR_TOLERANCE = 0.01


def _entities(name: str) -> dict[str, str]:
    stem = name.split(".")[0]
    parts = stem.split("_")
    return dict(p.split("-", 1) for p in parts[:-1] if "-" in p) | {"suffix": parts[-1]}


def sidecar_files(bold: str | os.PathLike[str]) -> list[Path]:
    """JSON sidecars that apply to ``bold`` under the BIDS inheritance principle, general first.

    A JSON file applies when it lies in the BOLD's folder or one of its parents up to the dataset
    root (the folder with ``dataset_description.json``, or the subject's parent), has the same
    suffix, and all its entities appear in the BOLD's name with the same values.
    """
    bold = Path(bold).absolute()
    ents = _entities(bold.name)
    folders = []
    for folder in bold.parents:
        folders.append(folder)
        if (folder / "dataset_description.json").exists() or not folder.name.startswith(
            ("sub-", "ses-", "func")
        ):
            break
    found = []
    for folder in reversed(folders):
        for cand in sorted(folder.glob("*.json")):
            cents = _entities(cand.name)
            if cents.get("suffix") != ents["suffix"]:
                continue
            if all(ents.get(k) == v for k, v in cents.items() if k != "suffix"):
                found.append(cand)
    return found


def bold_metadata(bold: str | os.PathLike[str]) -> dict[str, Any]:
    """Merged sidecar metadata of a BOLD run (more specific files override general ones)."""
    meta: dict[str, Any] = {}
    for path in sidecar_files(bold):
        content = read_json(path)
        if not isinstance(content, dict):
            raise InputError("sidecar is not a JSON object", path)
        meta.update(content)
    return meta


def check_bold(
    bold: str | os.PathLike[str] | nib.Nifti1Image,
    metadata: dict[str, Any],
    *,
    min_volumes: int = 10,
) -> tuple[nib.Nifti1Image, float]:
    """Validate a BOLD run and its metadata; return the image and the repetition time (s).

    Raises
    ------
    pipeline.errors.ImageError
        3-D (or 5-D) image, fewer than ``min_volumes`` volumes, NaN/Inf voxels, header TR that
        disagrees with the sidecar's ``RepetitionTime``.
    pipeline.errors.InputError
        ``RepetitionTime`` missing or not a positive number, malformed ``SliceTiming``.
    """
    name = str(bold) if not isinstance(bold, nib.spatialimages.SpatialImage) else "<BOLD image>"
    img = check_image(bold, ndim=4)
    n_vol = img.shape[3]
    if n_vol < min_volumes:
        raise ImageError(f"BOLD run has {n_vol} volumes, at least {min_volumes} are needed", name)
    tr = metadata.get("RepetitionTime")
    if tr is None:
        raise InputError("RepetitionTime is missing from the BOLD sidecar JSON", name)
    if isinstance(tr, bool) or not isinstance(tr, int | float) or not tr > 0:
        raise InputError(f"RepetitionTime must be a positive number of seconds, got {tr!r}", name)
    zooms = img.header.get_zooms()
    header_tr = float(zooms[3]) if len(zooms) > 3 else 0.0
    units = img.header.get_xyzt_units()[1]
    if units == "msec":
        header_tr /= 1000.0
    elif units == "usec":
        header_tr /= 1e6
    if header_tr > 0 and abs(header_tr - tr) > TR_TOLERANCE * tr:
        raise ImageError(
            f"TR in the header ({header_tr:g} s) differs from RepetitionTime in the sidecar "
            f"({tr:g} s)",
            name,
        )
    slice_times = metadata.get("SliceTiming")
    if slice_times is not None:
        arr = np.asarray(slice_times, dtype=object)
        if arr.ndim != 1 or not all(isinstance(v, int | float) for v in arr):
            raise InputError("SliceTiming must be a list of numbers", name)
        if np.any(np.asarray(slice_times, float) < 0) or np.any(
            np.asarray(slice_times, float) > tr
        ):
            raise InputError(f"SliceTiming values must lie in [0, RepetitionTime={tr:g}]", name)
    return img, float(tr)


def slice_axis(img: nib.Nifti1Image, metadata: dict[str, Any]) -> int:
    """Voxel axis of slice acquisition: ``SliceEncodingDirection``, else the header, else 2."""
    direction = metadata.get("SliceEncodingDirection")
    if isinstance(direction, str) and direction.rstrip("-") in ("i", "j", "k"):
        return "ijk".index(direction.rstrip("-"))
    dim_info = img.header.get_dim_info()
    if dim_info[2] is not None:
        return int(dim_info[2])
    return 2


def global_signal(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean signal per volume inside ``mask`` (default: voxels above the mean of the mean image)."""
    if mask is None:
        mean = data.mean(axis=3)
        mask = mean > mean.mean()
    return data[mask].mean(axis=0)


def detect_nonsteady(data: np.ndarray, *, max_volumes: int = 10, threshold: float = 3.5) -> int:
    r"""Number of leading non-steady-state volumes (bright T1-saturation transients).

    With :math:`g_t` the global signal, :math:`m` its median and :math:`s` its robust scale
    (1.4826 × MAD) over the volumes after ``max_volumes``, volume :math:`t` is a transient while
    :math:`(g_t - m)/s > ` ``threshold``; counting stops at the first steady volume.
    """
    gs = global_signal(np.asarray(data, dtype=np.float32))
    n = gs.size
    tail = gs[min(max_volumes, n // 2) :]
    med = float(np.median(tail))
    scale = 1.4826 * float(np.median(np.abs(tail - med)))
    scale = max(scale, 1e-3 * abs(med), 1e-12)
    count = 0
    for t in range(min(max_volumes, n - 1)):
        if (gs[t] - med) / scale > threshold:
            count += 1
        else:
            break
    return count
