r"""Registration quality control with measures that a wrong registration lowers.

Nothing here compares the template with something derived from the template through the same
transform (a template mask pulled back and pushed forward again scores high whatever the
registration did). For a subject pulled back onto the template grid (warped T1w
:math:`S\circ\phi`) and the template :math:`T` with brain mask :math:`\Omega`:

* ``mi``: mutual information (nats, 32 bins) of the rank-normalised :math:`T` and :math:`S\circ\phi`
  in :math:`\Omega` (invariant to monotone intensity maps);
* ``rank_corr``: Spearman correlation of :math:`T` and :math:`S\circ\phi` in :math:`\Omega`;
* ``wm_dice``: Dice of the subject's own white matter — segmented from its intensities alone
  (:func:`pipeline.anat.segment.intensity_classes`, no priors) and warped to the template — with
  the template's white matter (prior > 0.5);
* ``gm_dice``: the same for grey matter (reported, not thresholded: GM is thin, and coarse grids
  blur it);
* Jacobian determinant :math:`\det D\phi` of the full template → subject map in :math:`\Omega`:
  ``folding`` (fraction with :math:`\det \le 0`), and its min / 1st percentile / median /
  99th percentile / max.
"""

from __future__ import annotations

import os

import ants
import nibabel as nib
import numpy as np
from scipy import stats

from pipeline.anat.options import AnatOptions
from pipeline.anat.pose import mutual_information, rank_normalize
from pipeline.antsio import nib_to_ants

#: the QC metrics in the order they are written
QC_COLUMNS = (
    "mi",
    "rank_corr",
    "wm_dice",
    "gm_dice",
    "folding",
    "jac_min",
    "jac_p01",
    "jac_median",
    "jac_p99",
    "jac_max",
)


def jacobian_stats(
    reference: nib.spatialimages.SpatialImage,
    forward: str | os.PathLike[str],
    mask: np.ndarray,
) -> dict[str, float]:
    """Statistics of :math:`\\det D\\phi` for the transform file ``forward`` on ``reference``'s grid."""
    import tempfile

    ref = nib_to_ants(reference)
    with tempfile.TemporaryDirectory() as tmp:
        field = ants.apply_transforms(ref, ref, [str(forward)], compose=os.path.join(tmp, "f_"))
        jac = ants.create_jacobian_determinant_image(ref, field, do_log=False).numpy()[mask]
    p = np.percentile(jac, [0, 1, 50, 99, 100])
    return {
        "folding": float(np.mean(jac <= 0)),
        "jac_min": float(p[0]),
        "jac_p01": float(p[1]),
        "jac_median": float(p[2]),
        "jac_p99": float(p[3]),
        "jac_max": float(p[4]),
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1))


def registration_qc(
    template: nib.spatialimages.SpatialImage,
    template_mask: nib.spatialimages.SpatialImage,
    warped_t1w: nib.spatialimages.SpatialImage,
    warped_wm: nib.spatialimages.SpatialImage | None = None,
    template_wm: nib.spatialimages.SpatialImage | None = None,
    forward: str | os.PathLike[str] | None = None,
    warped_gm: nib.spatialimages.SpatialImage | None = None,
    template_gm: nib.spatialimages.SpatialImage | None = None,
) -> dict[str, float]:
    """QC metrics of a registration (see the module docstring). All images on the template grid.

    Parameters
    ----------
    template, template_mask : nibabel images
    warped_t1w : nibabel image
        Subject T1w resampled onto the template grid.
    warped_wm, warped_gm : nibabel images, optional
        The subject's own WM / GM classes (from its intensities, no priors) resampled onto the
        template grid; without them the Dice metrics are NaN.
    template_wm, template_gm : nibabel images, optional
        The template's WM / GM probability maps.
    forward : path-like, optional
        The template → subject transform file; without it the Jacobian metrics are NaN.
    """
    omega = np.asarray(template_mask.get_fdata()) > 0.5
    t = np.asarray(template.get_fdata(dtype=np.float32))
    s = np.asarray(warped_t1w.get_fdata(dtype=np.float32))
    tv, sv = t[omega], s[omega]
    rank_s = rank_normalize(s, omega)[omega] if np.ptp(sv) > 0 else np.zeros_like(sv)
    rank_t = rank_normalize(t, omega)[omega]
    out = {
        "mi": mutual_information(rank_t, rank_s, bins=32),
        "rank_corr": float(stats.spearmanr(tv, sv).statistic) if np.ptp(sv) > 0 else 0.0,
    }
    for name, subject, reference in (
        ("wm_dice", warped_wm, template_wm),
        ("gm_dice", warped_gm, template_gm),
    ):
        if subject is None or reference is None:
            out[name] = float("nan")
        else:
            out[name] = _dice(
                np.asarray(subject.get_fdata()) > 0.5, np.asarray(reference.get_fdata()) > 0.5
            )
    if forward is not None:
        out.update(jacobian_stats(template, forward, omega))
    else:
        out.update({k: float("nan") for k in QC_COLUMNS[4:]})
    return {k: float(out[k]) for k in QC_COLUMNS}


def qc_failures(metrics: dict[str, float], options: AnatOptions) -> list[str]:
    """Names (with values and thresholds) of the metrics outside the configured QC limits."""
    failed = []
    checks = (
        ("mi", options.qc_min_mi, ">="),
        ("rank_corr", options.qc_min_rank_corr, ">="),
        ("wm_dice", options.qc_min_wm_dice, ">="),
        ("folding", options.qc_max_folding, "<="),
    )
    for name, limit, op in checks:
        value = metrics.get(name, float("nan"))
        if np.isnan(value):
            continue
        ok = value >= limit if op == ">=" else value <= limit
        if not ok:
            failed.append(f"{name}={value:.4g} (needs {op} {limit:g})")
    return failed


#: the options that set the QC verdict
QC_THRESHOLDS = ("qc_min_mi", "qc_min_rank_corr", "qc_min_wm_dice", "qc_max_folding")


def qc_record(
    metrics: dict[str, float],
    options: AnatOptions,
    subject: str,
    segmentation: dict | None = None,
) -> dict:
    """The registration QC record written as ``desc-registration_qc.json``.

    ``flags`` lists problems that do not fail the subject but must be seen (an Atropos failure
    whose tissue maps fell back to the warped priors); ``failures`` the thresholds missed.
    """
    failures = qc_failures(metrics, options)
    flags = []
    if segmentation and segmentation.get("Failure"):
        flags.append(f"segmentation: {segmentation['Failure']}")
    if segmentation and segmentation.get("Method") == "priors":
        flags.append("segmentation: tissue maps are the template priors (no subject information)")
    return {
        "subject": subject,
        **{k: round(metrics[k], 6) for k in QC_COLUMNS},
        "passed": not failures,
        "failures": failures,
        "flags": flags,
        "segmentation": segmentation or {},
        "thresholds": {k: getattr(options, k) for k in QC_THRESHOLDS},
    }


def qc_table(record: dict) -> str:
    """One-row TSV of a QC record (``participant_id``, the metrics, ``passed``, ``flags``)."""
    header = "\t".join(["participant_id", *QC_COLUMNS, "passed", "flags"])
    row = "\t".join(
        [
            f"sub-{record['subject']}",
            *(f"{record[k]:.6g}" for k in QC_COLUMNS),
            str(record["passed"]).lower(),
            "; ".join(record.get("flags", [])) or "n/a",
        ]
    )
    return header + "\n" + row + "\n"


def modulate(
    std_map: nib.spatialimages.SpatialImage, forward: str | os.PathLike[str]
) -> nib.Nifti1Image:
    r"""Jacobian modulation of a template-space map: :math:`p(\phi(x))\,\det D\phi(x)`.

    ``forward`` maps template points to subject points, so its Jacobian determinant is the
    subject volume that one template voxel stands for; multiplying preserves tissue volume (VBM).
    """
    import tempfile

    ref = nib_to_ants(std_map)
    with tempfile.TemporaryDirectory() as tmp:
        field = ants.apply_transforms(ref, ref, [str(forward)], compose=os.path.join(tmp, "f_"))
        jac = ants.create_jacobian_determinant_image(ref, field, do_log=False).numpy()
    data = np.asarray(std_map.get_fdata(dtype=np.float32)) * np.clip(jac, 0, None)
    out = nib.Nifti1Image(data.astype(np.float32), std_map.affine)
    out.header.set_xyzt_units("mm")
    return out


def qc_for_transforms(
    t1w: nib.spatialimages.SpatialImage,
    template,
    forward: list[str | os.PathLike[str]],
    inverse: list[str | os.PathLike[str]],
    options: AnatOptions | None = None,
) -> dict[str, float]:
    """Registration QC of a T1w under given transforms, the whole chain as the stage runs it.

    The brain mask and the subject's tissue classes are recomputed through ``inverse`` (as the
    stage would from that registration), then everything is judged on the template grid through
    ``forward``. Used to show the QC failing on deliberately wrong registrations.

    Parameters
    ----------
    t1w : nibabel image
        Bias-corrected T1w.
    template : pipeline.data.templates.Template
    forward, inverse : list of path-like
        ANTs transform lists (template → subject points; subject → template points).
    options : AnatOptions, optional
    """
    from pipeline.anat.segment import (
        TISSUES,
        initial_brain_mask,
        intensity_classes,
        segment_subject,
        warp_image,
    )

    options = options or AnatOptions()
    inverse = [str(p) for p in inverse]
    forward = [str(p) for p in forward]
    initial = initial_brain_mask(t1w, template.mask, inverse, options.mask_margin_mm)
    priors = {k: getattr(template, k.lower()) for k in TISSUES}
    mask, _, _, _ = segment_subject(
        t1w, initial, priors, inverse, options.tissue_method, options.prior_weight
    )
    classes = intensity_classes(t1w, mask)
    to_std = {
        k: warp_image(
            nib.Nifti1Image(classes[k].astype(np.float32), t1w.affine), template.t1w, forward
        )
        for k in ("WM", "GM")
    }
    return registration_qc(
        template.t1w,
        template.mask,
        warp_image(t1w, template.t1w, forward),
        warped_wm=to_std["WM"],
        template_wm=template.wm,
        warped_gm=to_std["GM"],
        template_gm=template.gm,
    )
