r"""Brain mask and tissue probability maps in the subject's space.

* Brain mask: the template brain mask pulled back through the inverse transform, thresholded at
  0.5, intersected with the (slightly dilated) head foreground of the subject, holes filled and the
  largest connected component kept.
* Tissues: ``ants.atropos`` with the template GM/WM/CSF priors pulled back the same way (prior
  weight 0.25), or the pulled-back priors themselves (``method="priors"``), renormalised so that
  :math:`p_{GM} + p_{WM} + p_{CSF} = 1` inside the mask.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import ants
import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.anat._antsio import ants_to_nib, nib_to_ants
from pipeline.anat.pose import foreground_mask

logger = logging.getLogger(__name__)

TISSUES = ("GM", "WM", "CSF")


def warp_image(
    moving: nib.spatialimages.SpatialImage,
    reference: nib.spatialimages.SpatialImage,
    transform: str | os.PathLike[str],
    interpolation: Literal["linear", "nearestNeighbor", "genericLabel", "bSpline"] = "linear",
) -> nib.Nifti1Image:
    """Resample ``moving`` onto ``reference``'s grid through an ANTs transform file."""
    out = ants.apply_transforms(
        nib_to_ants(reference), nib_to_ants(moving), [str(transform)], interpolator=interpolation
    )
    return ants_to_nib(out)


def brain_mask(
    t1w: nib.spatialimages.SpatialImage,
    template_mask: nib.spatialimages.SpatialImage,
    inverse: str | os.PathLike[str],
) -> nib.Nifti1Image:
    """Template-based brain mask in the subject's space (uint8, 0/1)."""
    warped = warp_image(template_mask, t1w, inverse).get_fdata() > 0.5
    data = np.asarray(t1w.get_fdata(dtype=np.float32))
    head = ndimage.binary_dilation(foreground_mask(data), iterations=2)
    mask = ndimage.binary_fill_holes(warped & head)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    out = nib.Nifti1Image(mask.astype(np.uint8), t1w.affine)
    out.header.set_xyzt_units("mm")
    return out


def tissue_maps(
    t1w: nib.spatialimages.SpatialImage,
    mask: nib.spatialimages.SpatialImage,
    priors: dict[str, nib.spatialimages.SpatialImage],
    inverse: str | os.PathLike[str],
    method: Literal["atropos", "priors"] = "atropos",
) -> dict[str, nib.Nifti1Image]:
    """GM/WM/CSF probability maps in the subject's space.

    Parameters
    ----------
    t1w : nibabel image
        Bias-corrected T1w.
    mask : nibabel image
        Brain mask on the T1w grid.
    priors : dict
        Template tissue maps keyed ``"GM"``, ``"WM"``, ``"CSF"``.
    inverse : path-like
        Template → subject resampling transform (subject points → template points).
    method : {"atropos", "priors"}, default="atropos"

    Returns
    -------
    dict of nibabel.Nifti1Image
        float32 maps keyed by tissue, summing to 1 inside the mask and 0 outside.
    """
    m = np.asarray(mask.get_fdata()) > 0
    warped = {
        k: np.clip(warp_image(priors[k], t1w, inverse).get_fdata(dtype=np.float32), 0, 1)
        for k in TISSUES
    }
    probs = None
    if method == "atropos" and m.sum() > 100:
        amask = nib_to_ants(nib.Nifti1Image(m.astype(np.float32), t1w.affine))
        prior_imgs = [nib_to_ants(nib.Nifti1Image(warped[k] * m, t1w.affine)) for k in TISSUES]
        try:
            seg = ants.atropos(
                a=nib_to_ants(t1w),
                x=amask,
                i=prior_imgs,
                m="[0.1,1x1x1]",
                c="[3,0]",
                priorweight=0.25,
            )
            probs = {
                k: seg["probabilityimages"][i].numpy().astype(np.float32)
                for i, k in enumerate(TISSUES)
            }
        except RuntimeError as exc:  # pragma: no cover - depends on ANTs internals
            logger.warning("atropos failed (%s); falling back to warped priors", exc)
    if probs is None:
        probs = warped
    total = sum(probs.values())
    out = {}
    for k in TISSUES:
        p = np.where(m & (total > 1e-6), probs[k] / np.maximum(total, 1e-6), 0.0).astype(np.float32)
        img = nib.Nifti1Image(p, t1w.affine)
        img.header.set_xyzt_units("mm")
        out[k] = img
    return out
