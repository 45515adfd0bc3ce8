"""Loading, validating and atomically writing files.

Inputs are checked once, at the boundary: :func:`check_image` accepts a path or a nibabel image
and returns a loaded, validated image (calling it twice changes nothing). Before any voxel is read,
:func:`check_header` checks what the header declares against what the file holds (so a header
declaring 20000³ voxels over a few kilobytes is refused without allocating them), the data type
(real-valued), the voxel sizes (finite, positive) and the shape (not empty). Every error names the
file and the problem in one line (:class:`pipeline.errors.ImageError`).

:func:`check_writable_dir` checks, before any work, that an output or work folder can be created
and written (:class:`pipeline.errors.OutputError`).

Every output is written through :func:`atomic_path` (temporary file in the destination folder,
then :func:`os.replace`), so an interrupted run never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.errors import ImageError, OutputError

ImageLike = str | os.PathLike[str] | nib.spatialimages.SpatialImage

#: largest voxel-size ratio accepted before an image is called "extremely anisotropic"
MAX_ANISOTROPY = 8.0
#: largest voxel payload a header may declare (bytes): far above a 0.5 mm whole-brain 4-D run
MAX_IMAGE_BYTES = 1 << 40
#: marks the temporaries of :func:`atomic_path` (``.NAME.part-XXXXXXXX.SUFFIXES``)
PART_MARK = ".part-"
_PART_NAME = re.compile(r"^\..+\.part-[A-Za-z0-9_]{8}(\..+)?$")

logger = logging.getLogger(__name__)


def _name(img: ImageLike) -> str:
    if isinstance(img, nib.spatialimages.SpatialImage):
        fname = img.get_filename()
        return fname if fname else "<in-memory image>"
    return str(img)


def _size(n: float) -> str:
    """``n`` bytes in words (``1.5 MB``)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    raise AssertionError  # pragma: no cover


def _gzip_isize(path: Path) -> int | None:
    """The gzip trailer's ISIZE: the uncompressed size modulo 2**32 (of the last member)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 18:
            return None
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def _gzip_holds(path: Path, limit: int) -> tuple[int, str | None]:
    """Uncompressed bytes of a gzip file, counted by streaming (never held), stopping at ``limit``.

    Returns the count and, when the stream is truncated or corrupt, why.
    """
    count = 0
    try:
        with gzip.open(path, "rb") as fh:
            while count < limit:
                chunk = fh.read(min(1 << 22, limit - count))
                if not chunk:
                    break
                count += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        return count, str(exc) or type(exc).__name__
    return count, None


def _raw_header(path: Path) -> nib.Nifti1Header:
    """The NIfTI-1/2 header as stored (unchecked: nibabel would silently fix some fields)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            block = fh.read(540)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(f"truncated or corrupt compressed data ({exc})", path) from exc
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})", path) from exc
    if len(block) < 348:
        raise ImageError(f"file is too short for a NIfTI header ({len(block)} bytes)", path)
    sizes = {struct.unpack("<i", block[:4])[0], struct.unpack(">i", block[:4])[0]}
    if 348 in sizes:
        klass, size = nib.Nifti1Header, 348
    elif 540 in sizes and len(block) >= 540:
        klass, size = nib.Nifti2Header, 540
    else:
        raise ImageError("not a NIfTI image (no NIfTI-1 or NIfTI-2 header)", path)
    try:
        return klass(block[:size], check=False)
    except (ValueError, nib.spatialimages.HeaderDataError) as exc:
        raise ImageError(f"not a readable NIfTI header ({exc})", path) from exc


def check_header(path: str | os.PathLike[str]) -> Path:
    """Check a NIfTI file's header against itself and the file, reading no voxel data.

    Refused, each with one line naming the file: a header that declares more data than the file
    holds (or an implausible amount), an empty shape, a complex or structured (RGB) data type, and
    voxel sizes that are not finite and positive. For ``.nii.gz`` the uncompressed size comes from
    the gzip trailer (ISIZE, modulo 2**32) or, when that disagrees, by streaming the
    decompression and counting bytes (never holding them).

    Returns
    -------
    Path
        ``path``, checked.

    Raises
    ------
    pipeline.errors.ImageError
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageError(
            f"broken symbolic link (its target {os.readlink(path)!r} does not exist)", path
        )
    if not path.exists():
        raise ImageError("file does not exist", path)
    if path.is_dir():
        raise ImageError("is a directory, expected a NIfTI file", path)
    hdr = _raw_header(path)
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
    except (ValueError, KeyError, nib.spatialimages.HeaderDataError) as exc:
        raise ImageError(f"header has an invalid shape or data type ({exc})", path) from exc
    if not shape or min(shape) < 1:
        raise ImageError(f"image is empty (the header declares shape {shape})", path)
    if dtype.kind == "c":
        raise ImageError(f"data type is complex ({dtype.name}); expected real-valued voxels", path)
    if dtype.kind not in "biuf":
        raise ImageError(f"data type {dtype} is not a real-valued scalar type (RGB?)", path)
    zooms = [float(z) for z in hdr["pixdim"][1 : 1 + min(len(shape), 3)]]
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise ImageError(
            f"voxel sizes {zooms} in the header (pixdim) must be finite and positive", path
        )
    declared = math.prod(shape) * dtype.itemsize
    what = f"{'×'.join(map(str, shape))} voxels of {dtype.name} ({_size(declared)})"
    magic = bytes(hdr["magic"]).rstrip(b"\0")
    if magic in (b"n+1", b"n+2"):  # one file (a .hdr/.img pair keeps its data elsewhere)
        vox_offset = float(hdr["vox_offset"])
        if not math.isfinite(vox_offset) or vox_offset > MAX_IMAGE_BYTES:
            raise ImageError(f"header has an invalid data offset (vox_offset {vox_offset})", path)
        offset = max(int(vox_offset), hdr.sizeof_hdr + 4)
        needed = offset + declared
        holds = _holds(path, needed, offset, what)
        if holds < needed:
            raise ImageError(
                f"header declares {what} but the file holds {_size(max(holds - offset, 0))} "
                "of image data (truncated, or a wrong header)",
                path,
            )
    if declared > MAX_IMAGE_BYTES:
        raise ImageError(
            f"header declares {what}, more than any plausible image ({_size(MAX_IMAGE_BYTES)})",
            path,
        )
    return path


def _holds(path: Path, needed: int, offset: int, what: str) -> int:
    """Bytes the file holds uncompressed (counted up to ``needed`` at most for ``.gz``)."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    isize = _gzip_isize(path)
    if isize == needed % 2**32:  # the usual case: one gzip member, nothing after the data
        return needed
    holds, broken = _gzip_holds(path, needed)
    if broken:
        raise ImageError(
            f"truncated or corrupt compressed data ({broken}): header declares {what}, "
            f"the file holds {_size(max(holds - offset, 0))} of image data before the break",
            path,
        )
    return holds


def load_image(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """Load a NIfTI file, turning every nibabel/zlib/OS failure into a one-line :class:`ImageError`.

    The header is checked first (:func:`check_header`), so nothing is allocated for a header that
    declares more than the file holds. The data are then read completely, so truncated files fail
    here and not later in a worker.
    """
    path = Path(path)
    check_header(path)
    try:
        img = nib.load(str(path))
        # force a full read: truncated gzip streams only fail here
        np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(f"truncated or corrupt compressed data ({exc})", path) from exc
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as exc:
        raise ImageError(f"not a readable NIfTI image ({exc})", path) from exc
    except MemoryError as exc:
        raise ImageError("not enough memory to read the image", path) from exc
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
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise ImageError(f"image has a degenerate spatial shape {tuple(shape)}", name)
    check_affine(img.affine, name)
    if shape != img.shape:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(shape), img.affine, img.header)
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    if max_anisotropy is not None and zooms.max() / zooms.min() > max_anisotropy:
        raise ImageError(
            f"voxel sizes {np.round(zooms, 3).tolist()} are extremely anisotropic "
            f"(ratio {zooms.max() / zooms.min():.1f} > {max_anisotropy})",
            name,
        )
    data = np.asanyarray(img.dataobj)
    if np.iscomplexobj(data):
        raise ImageError(f"data type is complex ({data.dtype}); expected real-valued voxels", name)
    if data.size == 0:
        raise ImageError(f"image is empty (shape {tuple(data.shape)})", name)
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


def check_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` (with its parents) if needed and check that files can be written in it.

    Parameters
    ----------
    path : path-like
        The folder.
    what : str, default="output folder"
        What the folder is, for the message (``"work folder"``).

    Returns
    -------
    Path
        ``path``, existing and writable.

    Raises
    ------
    pipeline.errors.OutputError
        One line naming the folder and why it cannot be used.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} is a file, not a folder", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
        elif isinstance(exc, PermissionError):
            reason = f"permission denied in {blocker}" if blocker else "permission denied"
        else:
            reason = exc.strerror or str(exc)
        raise OutputError(f"cannot create the {what} ({reason})", path) from exc
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".symprep-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in the {what} ({exc.strerror or exc})", path) from exc
    return path


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
        if path.is_symlink():
            raise InputError(
                f"broken symbolic link (its target {os.readlink(path)!r} does not exist)", path
            ) from exc
        raise InputError("file does not exist", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at line {exc.lineno})", path) from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"invalid JSON (not UTF-8 text at byte {exc.start})", path) from exc
    except IsADirectoryError as exc:
        raise InputError("is a directory, expected a JSON file", path) from exc
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path) from exc
