r"""Brain mask and tissue probability maps from the subject's own image.

The order follows antsBrainExtraction / antsCorticalThickness (and sMRIPrep):

1. :func:`initial_brain_mask` — the template brain mask pulled back through the inverse
   transform, thresholded at 0.5, intersected with the subject's head foreground and dilated by a
   margin, so that the subject's own boundary lies inside it.
2. :func:`segment_tissues` — ``ants.atropos`` on the N4-corrected T1w inside that mask, with the
   pulled-back template GM/WM/CSF maps as *spatial priors* (``prior_weight``, 0.1 by default;
   antsCorticalThickness uses 0.25, which we measured to keep too little of the subject): the likelihood comes from the subject's intensities, the priors only
   steer it. ``method="priors"`` (the pulled-back priors themselves, no subject information) is an
   explicitly named fallback, never the default; an Atropos failure is reported, not hidden.
3. :func:`refine_brain_mask` — the brain is where the subject's GM + WM posterior wins, eroded
   to cut bridges, its largest component kept, dilated back, closed and hole-filled (so sulcal
   and ventricular CSF are inside), within the initial mask.
4. The posteriors are renormalised inside the refined mask and :func:`hard_segmentation` gives
   fMRIPrep's ``dseg`` labels (1 GM, 2 WM, 3 CSF).

:func:`intensity_classes` segments the brain *without* priors (k-means initialised Atropos), so
that registration QC can compare the subject's own tissue with the template's without the
circularity of a prior pushed back and forth through the same transform.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import ants
import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.anat.pose import foreground_mask
from pipeline.antsio import ants_to_nib, nib_to_ants

logger = logging.getLogger(__name__)

TISSUES = ("GM", "WM", "CSF")
#: fMRIPrep's dseg labels
DSEG_LABELS = {"GM": 1, "WM": 2, "CSF": 3}


def warp_image(
    moving: nib.spatialimages.SpatialImage,
    reference: nib.spatialimages.SpatialImage,
    transform: str | os.PathLike[str] | list,
    interpolation: Literal["linear", "nearestNeighbor", "genericLabel", "bSpline"] = "linear",
) -> nib.Nifti1Image:
    """Resample ``moving`` onto ``reference``'s grid through ANTs transform file(s)."""
    transforms = [str(t) for t in transform] if isinstance(transform, list) else [str(transform)]
    out = ants.apply_transforms(
        nib_to_ants(reference), nib_to_ants(moving), transforms, interpolator=interpolation
    )
    return ants_to_nib(out)


def _image(data: np.ndarray, like: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, like.affine)
    img.header.set_xyzt_units("mm")
    return img


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _ball(radius_vox: int) -> np.ndarray:
    r = max(int(radius_vox), 1)
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (grid**2).sum(0) <= r * r


def _voxels(mm: float, img: nib.spatialimages.SpatialImage) -> int:
    return max(1, int(round(mm / float(np.mean(img.header.get_zooms()[:3])))))


def initial_brain_mask(
    t1w: nib.spatialimages.SpatialImage,
    template_mask: nib.spatialimages.SpatialImage,
    inverse: str | os.PathLike[str],
    margin_mm: float = 4.0,
) -> nib.Nifti1Image:
    """Template brain mask pulled back to the T1w, within the head, dilated by ``margin_mm``.

    Parameters
    ----------
    t1w : nibabel image
        Bias-corrected T1w.
    template_mask : nibabel image
        Template brain mask.
    inverse : path-like
        Template → subject resampling transform (subject points → template points).
    margin_mm : float, default=4.0
        Dilation, so that the subject's own brain boundary lies inside the mask.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 0/1 mask on the T1w grid.
    """
    warped = warp_image(template_mask, t1w, inverse).get_fdata() > 0.5
    data = np.asarray(t1w.get_fdata(dtype=np.float32))
    # the margin grows into the head only: background (a skull-stripped or defaced image, or air)
    # would be a fourth class that Atropos has no room for
    head = ndimage.binary_fill_holes(foreground_mask(data))
    grown = ndimage.binary_dilation(warped, structure=_ball(_voxels(margin_mm, t1w)))
    mask = _largest_component(ndimage.binary_fill_holes(grown & head))
    return _image(mask.astype(np.uint8), t1w)


@dataclass
class Segmentation:
    """Tissue probabilities of one subject, with how they were obtained."""

    probabilities: dict[str, np.ndarray]
    method: str
    prior_weight: float | None
    failure: str | None = None
    details: dict = field(default_factory=dict)


def _atropos(
    t1w: nib.spatialimages.SpatialImage,
    mask: np.ndarray,
    priors: list[np.ndarray] | None,
    prior_weight: float = 0.1,
    mrf: str = "[0.1,1x1x1]",
    iterations: int = 5,
) -> list[np.ndarray]:
    amask = nib_to_ants(nib.Nifti1Image(mask.astype(np.float32), t1w.affine))
    if priors is None:
        init = f"kmeans[{len(TISSUES)}]"
        weight = 0.0
    else:
        init = [nib_to_ants(nib.Nifti1Image(p * mask, t1w.affine)) for p in priors]
        weight = prior_weight
    # r=0: Atropos's constant internal seed (its default seeds from the clock), so the same
    # image gives the same segmentation
    seg = ants.atropos(
        a=nib_to_ants(t1w),
        x=amask,
        i=init,
        m=mrf,
        c=f"[{iterations},0]",
        priorweight=weight,
        r=0,
    )
    return [np.asarray(p.numpy(), dtype=np.float32) for p in seg["probabilityimages"]]


def segment_tissues(
    t1w: nib.spatialimages.SpatialImage,
    mask: nib.spatialimages.SpatialImage,
    priors: dict[str, nib.spatialimages.SpatialImage],
    inverse: str | os.PathLike[str],
    method: Literal["atropos", "priors"] = "atropos",
    prior_weight: float = 0.1,
) -> Segmentation:
    """GM/WM/CSF posteriors of the subject (see the module docstring).

    Parameters
    ----------
    t1w : nibabel image
        Bias-corrected T1w.
    mask : nibabel image
        Region to segment (:func:`initial_brain_mask`).
    priors : dict
        Template tissue maps keyed ``"GM"``, ``"WM"``, ``"CSF"``.
    inverse : path-like
        Template → subject resampling transform.
    method : {"atropos", "priors"}, default="atropos"
    prior_weight : float, default=0.1
        Atropos prior weight (0: intensities only; 1: priors dominate).

    Returns
    -------
    Segmentation
        ``failure`` is set (and the pulled-back priors returned, ``method="priors"``) when Atropos
        fails; callers report it as a QC flag.
    """
    m = np.asarray(mask.get_fdata()) > 0
    warped = {
        k: np.clip(warp_image(priors[k], t1w, inverse).get_fdata(dtype=np.float32), 0, 1)
        for k in TISSUES
    }
    if method == "priors":
        return Segmentation(warped, "priors", None)
    if m.sum() < 100:
        return Segmentation(warped, "priors", None, failure="atropos: brain mask under 100 voxels")
    try:
        probs = _atropos(t1w, m, [warped[k] for k in TISSUES], prior_weight)
    except (RuntimeError, ValueError) as exc:  # ANTs raises RuntimeError on numerical failure
        logger.warning("atropos failed (%s); tissue maps are the warped priors", exc)
        return Segmentation(warped, "priors", None, failure=f"atropos failed: {exc}")
    out = dict(zip(TISSUES, probs, strict=True))
    means = {k: float(np.average(t1w.get_fdata()[m], weights=out[k][m] + 1e-9)) for k in TISSUES}
    if not means["CSF"] < means["GM"] < means["WM"]:
        # T1 contrast is CSF < GM < WM; anything else means the classes swapped
        return Segmentation(
            out,
            "atropos",
            prior_weight,
            failure=f"atropos: implausible tissue means { ({k: round(v, 1) for k, v in means.items()}) }",
            details={"class_means": means},
        )
    return Segmentation(out, "atropos", prior_weight, details={"class_means": means})


def refine_brain_mask(
    initial: nib.spatialimages.SpatialImage,
    probabilities: dict[str, np.ndarray],
    close_mm: float = 4.0,
) -> nib.Nifti1Image:
    """Brain mask from the subject's own segmentation (antsBrainExtraction's morphology).

    Parameters
    ----------
    initial : nibabel image
        The region that was segmented (:func:`initial_brain_mask`).
    probabilities : dict
        GM/WM/CSF posteriors on the same grid.
    close_mm : float, default=4.0
        Radius of the morphological closing that brings sulcal CSF inside.
    """
    region = np.asarray(initial.get_fdata()) > 0
    tissue = (probabilities["GM"] + probabilities["WM"]) > np.maximum(probabilities["CSF"], 0.5)
    tissue &= region
    core = _largest_component(ndimage.binary_erosion(tissue, iterations=1))
    if not core.any():
        return _image(region.astype(np.uint8), initial)
    brain = ndimage.binary_dilation(core, iterations=1) & region
    r = _voxels(close_mm, initial)
    padded = np.pad(brain, r + 1)
    closed = ndimage.binary_closing(padded, structure=_ball(r))[
        r + 1 : -(r + 1), r + 1 : -(r + 1), r + 1 : -(r + 1)
    ]
    mask = _largest_component(ndimage.binary_fill_holes(closed & region))
    return _image(mask.astype(np.uint8), initial)


def normalise_probabilities(
    probabilities: dict[str, np.ndarray], mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Posteriors scaled to sum to 1 inside ``mask`` and set to 0 outside."""
    total = sum(probabilities.values())
    ok = mask & (total > 1e-6)
    return {
        k: np.where(ok, p / np.maximum(total, 1e-6), 0.0).astype(np.float32)
        for k, p in probabilities.items()
    }


def hard_segmentation(probabilities: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """fMRIPrep's ``dseg``: 1 GM, 2 WM, 3 CSF (most probable tissue) inside ``mask``, 0 outside."""
    stack = np.stack([probabilities[k] for k in TISSUES])
    labels = np.asarray([DSEG_LABELS[k] for k in TISSUES], dtype=np.uint8)[np.argmax(stack, 0)]
    return np.where(mask, labels, 0).astype(np.uint8)


def segment_subject(
    t1w: nib.spatialimages.SpatialImage,
    initial_mask: nib.spatialimages.SpatialImage,
    priors: dict[str, nib.spatialimages.SpatialImage],
    inverse: str | os.PathLike[str],
    method: Literal["atropos", "priors"] = "atropos",
    prior_weight: float = 0.1,
) -> tuple[nib.Nifti1Image, dict[str, nib.Nifti1Image], nib.Nifti1Image, dict]:
    """Segment, refine the brain mask, renormalise: the anatomical stage's tissue step.

    Returns
    -------
    mask : nibabel.Nifti1Image
        Refined brain mask (uint8).
    probsegs : dict of nibabel.Nifti1Image
        GM/WM/CSF maps summing to 1 inside the mask.
    dseg : nibabel.Nifti1Image
        Hard labels (1 GM, 2 WM, 3 CSF).
    record : dict
        ``Method``, ``PriorWeight``, ``Failure`` (None when it worked) and tissue volumes (ml).
    """
    seg = segment_tissues(t1w, initial_mask, priors, inverse, method, prior_weight)
    if seg.method == "atropos":
        mask = refine_brain_mask(initial_mask, seg.probabilities)
    else:  # no subject information: keep the template's extent (not dilated)
        warped = sum(seg.probabilities.values()) > 0.5
        mask = _image((warped & (initial_mask.get_fdata() > 0)).astype(np.uint8), t1w)
    m = np.asarray(mask.get_fdata()) > 0
    probs = normalise_probabilities(seg.probabilities, m)
    voxel_ml = float(np.prod(t1w.header.get_zooms()[:3])) / 1000.0
    record = {
        "Method": "atropos" if seg.method == "atropos" else "priors",
        "MethodDescription": (
            "ants.atropos on the N4-corrected T1w with the template GM/WM/CSF maps as spatial "
            f"priors (prior weight {prior_weight:g})"
            if seg.method == "atropos"
            else "template GM/WM/CSF priors pulled back through the registration: carries no "
            "information from the subject's intensities"
        ),
        "PriorWeight": seg.prior_weight,
        "Failure": seg.failure,
        "VolumeMl": {k: float(probs[k][m].sum() * voxel_ml) for k in TISSUES},
        "BrainVolumeMl": float(m.sum() * voxel_ml),
    }
    if method == "atropos" and seg.method != "atropos" and seg.failure is None:
        record["Failure"] = "atropos did not run"
    dseg = _image(hard_segmentation(probs, m), t1w)
    return mask, {k: _image(v, t1w) for k, v in probs.items()}, dseg, record


def intensity_classes(
    t1w: nib.spatialimages.SpatialImage, mask: nib.spatialimages.SpatialImage
) -> dict[str, np.ndarray]:
    """Boolean GM/WM/CSF classes of the subject from its intensities alone (no priors).

    k-means-initialised Atropos (3 classes, MRF 0.1) inside ``mask``; classes are named by their
    mean intensity (T1: CSF < GM < WM). Used by registration QC as the subject's own tissue.
    """
    m = np.asarray(mask.get_fdata()) > 0
    probs = _atropos(t1w, m, None, iterations=3)
    data = np.asarray(t1w.get_fdata(dtype=np.float32))
    means = [float(np.average(data[m], weights=p[m] + 1e-9)) for p in probs]
    order = np.argsort(means)  # dark → bright
    labels = np.argmax(np.stack(probs), 0)
    named = {"CSF": order[0], "GM": order[1], "WM": order[2]}
    return {k: (labels == int(v)) & m for k, v in named.items()}
