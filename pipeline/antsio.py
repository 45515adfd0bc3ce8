"""Conversions between nibabel (RAS) and ANTs/ITK (LPS) images and affine transforms.

nibabel affines map voxel indices to RAS+ millimetres; ITK images and transforms live in LPS+.
With :math:`F = \\mathrm{diag}(-1, -1, 1)`, a RAS point :math:`x` is the LPS point :math:`Fx`, so a
RAS affine map :math:`x \\mapsto Ax + b` is the LPS map :math:`y \\mapsto FAF\\,y + Fb`.

An ANTs transform maps *fixed*-space points to *moving*-space points (it pulls the moving image
back onto the fixed grid). Every 4×4 matrix in :mod:`pipeline.anat` follows the same convention,
in RAS millimetres.

One module for every stage that hands images or transforms to ANTs (:mod:`pipeline.anat`,
:mod:`pipeline.func`, :mod:`pipeline.interfaces`, :mod:`pipeline.data`), so the RAS/LPS
convention is written once.
"""

from __future__ import annotations

import os
from pathlib import Path

import ants
import nibabel as nib
import numpy as np

#: the RAS <-> LPS flip as a 4×4 homogeneous matrix (its own inverse)
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def nib_to_ants(img: nib.spatialimages.SpatialImage, dtype: type = np.float32) -> ants.ANTsImage:
    """Convert a 3-D nibabel image to an ANTs image with the same world geometry.

    The voxel array keeps its index order; origin, spacing and direction come from ``F·affine``.
    """
    affine = FLIP @ np.asarray(img.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    data = np.asarray(img.get_fdata(dtype=np.float32) if dtype == np.float32 else img.get_fdata())
    out = ants.from_numpy(
        np.ascontiguousarray(data.astype(dtype, copy=False)),
        origin=affine[:3, 3].tolist(),
        spacing=spacing.tolist(),
        direction=direction,
    )
    return out


def ants_to_nib(img: ants.ANTsImage, dtype: type = np.float32) -> nib.Nifti1Image:
    """Convert a 3-D ANTs image back to a nibabel image (RAS affine, ``xyzt_units`` = mm)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.direction) * np.asarray(img.spacing)[None, :]
    lps[:3, 3] = img.origin
    out = nib.Nifti1Image(np.asarray(img.numpy(), dtype=dtype), FLIP @ lps)
    out.header.set_xyzt_units("mm")
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    return out


def ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """Express a 4×4 RAS point map in LPS coordinates (``F·M·F``; the map is an involution)."""
    return FLIP @ np.asarray(matrix, dtype=float) @ FLIP


def write_affine(matrix: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a 4×4 RAS fixed→moving point map as an ITK ``AffineTransform`` file (``.mat``/``.h5``)."""
    lps = ras_to_lps(matrix)
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="double",
        dimension=3,
        matrix=lps[:3, :3],
        translation=lps[:3, 3],
        center=np.zeros(3),
    )
    ants.write_transform(tx, str(path))
    return Path(path)


def write_itk_affines(matrices: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a series of 4×4 RAS fixed→moving point maps as one ITK text transform file.

    The format of fMRIPrep's ``desc-hmc_xfm.txt``: ``#Insight Transform File V1.0`` and one
    ``MatrixOffsetTransformBase_double_3_3`` block per matrix, in ITK's LPS convention (so
    ``matrices[t]`` maps reference points to the points of volume ``t``).
    """
    from pipeline.io import write_text

    lines = ["#Insight Transform File V1.0"]
    for t, matrix in enumerate(np.asarray(matrices, dtype=float)):
        lps = ras_to_lps(matrix)
        params = [*lps[:3, :3].ravel(), *lps[:3, 3]]
        lines += [
            f"#Transform {t}",
            "Transform: MatrixOffsetTransformBase_double_3_3",
            "Parameters: " + " ".join(f"{v:.10g}" for v in params),
            "FixedParameters: 0 0 0",
        ]
    return write_text(path, "\n".join(lines) + "\n")


def read_itk_affines(path: str | os.PathLike[str]) -> np.ndarray:
    """Read the RAS matrices of :func:`write_itk_affines` (or any ITK text file of affines with
    zero centres) as ``(T, 4, 4)``."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("Parameters:"):
            values = np.asarray(line.split(":", 1)[1].split(), dtype=float)
            lps = np.eye(4)
            lps[:3, :3] = values[:9].reshape(3, 3)
            lps[:3, 3] = values[9:12]
            out.append(ras_to_lps(lps))  # F·M·F is its own inverse
    return np.asarray(out)


def read_affine(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ITK affine/rigid transform file as a 4×4 RAS fixed→moving point map."""
    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=float)
    center = np.asarray(tx.fixed_parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + center - matrix @ center
    return ras_to_lps(lps)


def strip_hdf5_times(path: str | os.PathLike[str]) -> Path:
    """Rewrite an ITK HDF5 transform file without HDF5 object timestamps, in place.

    ITK's HDF5 writer records creation/modification times in every object header, so the same
    transform written twice gives two different files. The copy holds the same groups, datasets
    (dtype, chunking, gzip level) and attributes with time tracking off, so equal transforms give
    byte-identical files (checksums can compare reruns). ITK and antspyx read it unchanged.
    """
    import h5py

    src = Path(path)
    tmp = src.with_name(f".{src.name}.tmp")
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    with h5py.File(src, "r") as fin:
        fid = h5py.h5f.create(str(tmp).encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl)
        with h5py.File(fid) as fout:

            def copy(name: str, obj: h5py.HLObject) -> None:
                if isinstance(obj, h5py.Group):
                    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
                    gcpl.set_obj_track_times(False)
                    h5py.h5g.create(fout.id, name.encode(), gcpl=gcpl)
                else:
                    fout.create_dataset(
                        name,
                        data=obj[()],
                        dtype=obj.dtype,
                        chunks=obj.chunks,
                        compression=obj.compression,
                        compression_opts=obj.compression_opts,
                        shuffle=obj.shuffle,
                        track_times=False,
                    )
                for key, value in obj.attrs.items():
                    fout[name].attrs[key] = value

            fin.visititems(copy)
    os.replace(tmp, src)
    return src
