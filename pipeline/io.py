"""Loading, validating and atomically writing files.

Inputs are checked once, at the boundary: :func:`check_image` accepts a path or a nibabel image
and returns a loaded, validated image (calling it twice changes nothing). Every error names the
file and the problem in one line (:class:`pipeline.errors.ImageError`).

Every output is written through :func:`atomic_path` (temporary file in the destination folder,
then :func:`os.replace`), so an interrupted run never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.errors import ImageError

ImageLike = str | os.PathLike[str] | nib.spatialimages.SpatialImage

#: largest voxel-size ratio accepted before an image is called "extremely anisotropic"
MAX_ANISOTROPY = 8.0
#: marks the temporaries of :func:`atomic_path` (``.NAME.part-XXXXXXXX.SUFFIXES``)
PART_MARK = ".part-"
_PART_NAME = re.compile(r"^\..+\.part-[A-Za-z0-9_]{8}(\..+)?$")

logger = logging.getLogger(__name__)


def _name(img: ImageLike) -> str:
    if isinstance(img, nib.spatialimages.SpatialImage):
        fname = img.get_filename()
        return fname if fname else "<in-memory image>"
    return str(img)


def load_image(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """Load a NIfTI file, turning every nibabel/zlib/OS failure into a one-line :class:`ImageError`.

    The data are read completely, so truncated files fail here and not later in a worker.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError("file does not exist", path)
    if path.is_dir():
        raise ImageError("is a directory, expected a NIfTI file", path)
    try:
        img = nib.load(str(path))
        # force a full read: truncated gzip streams only fail here
        np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(f"truncated or corrupt compressed data ({exc})", path) from exc
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as exc:
        raise ImageError(f"not a readable NIfTI image ({exc})", path) from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read image data ({exc})", path) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageError(f"expected a NIfTI image, got {type(img).__name__}", path)
    return img


def check_affine(affine: np.ndarray, name: str = "<image>") -> np.ndarray:
    """Validate a 4×4 voxel-to-world affine: finite, invertible and not degenerate."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ImageError(f"affine has shape {affine.shape}, expected (4, 4)", name)
    if not np.all(np.isfinite(affine)):
        raise ImageError("affine contains NaN or Inf", name)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    det = np.linalg.det(affine[:3, :3])
    if np.any(zooms < 1e-6) or abs(det) < 1e-9 * max(float(np.prod(zooms)), 1e-30):
        raise ImageError(f"affine is singular (voxel sizes {np.round(zooms, 6).tolist()})", name)
    return affine


def check_image(
    img: ImageLike,
    ndim: int | tuple[int, ...] = 3,
    *,
    allow_nonfinite: bool = False,
    allow_constant: bool = False,
    max_anisotropy: float | None = MAX_ANISOTROPY,
) -> nib.Nifti1Image:
    """Load (if needed) and validate an image.

    Parameters
    ----------
    img : str, path-like or nibabel image
        The image or its path.
    ndim : int or tuple of int, default=3
        Accepted dimensionalities. Trailing singleton dimensions are squeezed first
        (a 3-D image stored as X×Y×Z×1 is accepted as 3-D).
    allow_nonfinite : bool, default=False
        Accept NaN/Inf voxels.
    allow_constant : bool, default=False
        Accept an image whose voxels all have the same value (for instance all zero).
    max_anisotropy : float or None, default=8.0
        Largest accepted ratio between the largest and smallest voxel size; None disables the check.

    Returns
    -------
    nibabel.Nifti1Image
        The validated image (squeezed to ``ndim`` when trailing dimensions were singletons).

    Raises
    ------
    pipeline.errors.ImageError
        With the file name and the problem, in one line.
    """
    name = _name(img)
    if not isinstance(img, nib.spatialimages.SpatialImage):
        img = load_image(img)
    accepted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    shape = img.shape
    while len(shape) > min(accepted) and shape[-1] == 1 and len(shape) not in accepted:
        shape = shape[:-1]
    if len(shape) not in accepted:
        want = " or ".join(f"{n}-D" for n in accepted)
        raise ImageError(
            f"image is {len(img.shape)}-D with shape {tuple(img.shape)}, expected {want}", name
        )
    if shape != img.shape:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(shape), img.affine, img.header)
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise ImageError(f"image has a degenerate spatial shape {tuple(shape)}", name)
    check_affine(img.affine, name)
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    if max_anisotropy is not None and zooms.max() / zooms.min() > max_anisotropy:
        raise ImageError(
            f"voxel sizes {np.round(zooms, 3).tolist()} are extremely anisotropic "
            f"(ratio {zooms.max() / zooms.min():.1f} > {max_anisotropy})",
            name,
        )
    data = np.asanyarray(img.dataobj)
    if (
        not allow_nonfinite
        and np.issubdtype(data.dtype, np.floating)
        and not np.all(np.isfinite(data))
    ):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ImageError(f"image contains {n_bad} NaN or Inf voxels", name)
    if not allow_constant and data.size and np.nanmin(data) == np.nanmax(data):
        raise ImageError(f"image is constant (every voxel is {np.nanmin(data)!r})", name)
    return img


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    The temporary file is hidden and marked: ``.STEM.part-XXXXXXXX.SUFFIXES``. A process killed
    mid-write (SIGKILL, node failure) leaves it behind; :func:`remove_stale_parts` clears them
    when the job is rerun.

    The temporary name keeps ``dest``'s suffixes (``.nii.gz``, ``.h5`` …) so that writers that
    pick the format from the extension still work. On any exception the temporary file is removed
    and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(
        dir=dest.parent, prefix=f".{dest.name.split('.')[0]}{PART_MARK}", suffix=suffix
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files: give the output the permissions a plain open() would (umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_stale_parts(
    folder: str | os.PathLike[str], prefix: str = "", *, recursive: bool = True
) -> list[Path]:
    """Delete the temporaries that killed writers left in ``folder`` (and below it).

    Only files named like :func:`atomic_path`'s temporaries (``.NAME.part-XXXXXXXX…``) whose
    name starts with ``.`` + ``prefix`` are removed, so a job can clear its own leftovers in a
    folder shared with jobs still running (``prefix="sub-01"``).

    Returns
    -------
    list of Path
        The files removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    pattern = f".{prefix}*{PART_MARK}*"
    for path in sorted(root.rglob(pattern) if recursive else root.glob(pattern)):
        if path.is_file() and _PART_NAME.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info(
            "removed %d partial file(s) left by an interrupted run in %s", len(removed), root
        )
    return removed


def save_image(img: nib.spatialimages.SpatialImage, dest: str | os.PathLike[str]) -> Path:
    """Write a nibabel image atomically and return the destination."""
    with atomic_path(dest) as tmp:
        nib.save(img, str(tmp))
    return Path(dest)


def write_text(dest: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically and return the destination."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(dest: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays are converted)."""
    return write_text(
        dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with a one-line :class:`~pipeline.errors.InputError` when it is malformed."""
    from pipeline.errors import InputError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError("file does not exist", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at line {exc.lineno})", path) from exc
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path) from exc
