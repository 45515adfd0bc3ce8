"""Header sanitisation of T1w images: qform/sform agreement, obliquity, reorientation to RAS.

The world geometry is kept exactly; only the storage order of the voxel array changes
(``nibabel.as_closest_canonical``), so every later step sees a RAS-ordered array.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from pipeline.errors import ImageError
from pipeline.io import ImageLike, check_image

logger = logging.getLogger(__name__)

#: largest distance (mm, over the image corners) tolerated between qform and sform
QFORM_SFORM_TOLERANCE_MM = 1e-2


def _corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    homog = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.abs((a - b) @ homog)[:3].max())


def sanitize_t1w(img: ImageLike) -> tuple[nib.Nifti1Image, dict]:
    """Validate a T1w image, choose a trustworthy affine, and reorient it to RAS.

    Rules: the sform is used when its code is set, else the qform, else nibabel's fallback
    affine (logged). When both are set and disagree by more than
    :data:`QFORM_SFORM_TOLERANCE_MM` at the image corners the sform wins and the report says so.

    Parameters
    ----------
    img : path or nibabel image
        The T1w image.

    Returns
    -------
    image : nibabel.Nifti1Image
        float32, RAS-ordered, qform = sform = the chosen affine (code 1), units mm.
    report : dict
        Original orientation codes, affine source, qform/sform disagreement (mm), obliquity (deg).

    Raises
    ------
    pipeline.errors.ImageError
        4-D, 2-D, constant, non-finite, singular or extremely anisotropic inputs.
    """
    name = img.get_filename() if isinstance(img, nib.spatialimages.SpatialImage) else str(img)
    img = check_image(img, ndim=3)
    header = img.header
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    if scode and scode > 0:
        affine, source = sform, "sform"
    elif qcode and qcode > 0:
        affine, source = qform, "qform"
    else:
        affine, source = img.affine, "fallback"
        logger.warning("%s: neither sform nor qform is set; using nibabel's fallback affine", name)
    disagreement = 0.0
    if scode and qcode and scode > 0 and qcode > 0:
        disagreement = _corner_distance(sform, qform, img.shape)
        if disagreement > QFORM_SFORM_TOLERANCE_MM:
            logger.warning(
                "%s: qform and sform differ by %.2f mm; using the sform", name, disagreement
            )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageError(f"the {source} affine is singular or non-finite", name)
    units = header.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 1e-3}.get(units, 1.0)
    if scale != 1.0:
        affine = np.diag([scale, scale, scale, 1.0]) @ affine
    data = np.asarray(img.get_fdata(dtype=np.float32))
    clean = nib.Nifti1Image(data, affine)
    original_codes = "".join(nib.aff2axcodes(affine))
    obliquity = float(np.degrees(np.max(nib.affines.obliquity(affine))))
    ras = nib.as_closest_canonical(clean)
    out = nib.Nifti1Image(np.asarray(ras.dataobj, dtype=np.float32), ras.affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(ras.affine, code=1)
    out.set_sform(ras.affine, code=1)
    report = {
        "source_file": name,
        "original_orientation": original_codes,
        "affine_source": source,
        "qform_sform_disagreement_mm": round(disagreement, 6),
        "obliquity_deg": round(obliquity, 4),
        "units": units,
        "shape": list(out.shape),
        "voxel_size_mm": np.round(np.linalg.norm(out.affine[:3, :3], axis=0), 6).tolist(),
    }
    return out, report
