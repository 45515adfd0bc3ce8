r"""Registration quality control.

For a subject pulled back onto the template grid (warped T1w :math:`S\circ\phi`, warped brain mask
:math:`B\circ\phi`) and the template :math:`T` with brain mask :math:`\Omega`:

* ``mi``: mutual information (nats, 32 bins) of the rank-normalised :math:`T` and :math:`S\circ\phi`
  in :math:`\Omega` (invariant to monotone intensity maps);
* ``rank_corr``: Spearman correlation of :math:`T` and :math:`S\circ\phi` in :math:`\Omega`;
* ``dice``: :math:`2|B\circ\phi \cap \Omega| / (|B\circ\phi| + |\Omega|)`;
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

from pipeline.anat._antsio import nib_to_ants
from pipeline.anat.options import AnatOptions
from pipeline.anat.pose import mutual_information, rank_normalize

#: the QC metrics in the order they are written
QC_COLUMNS = (
    "mi",
    "rank_corr",
    "dice",
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


def registration_qc(
    template: nib.spatialimages.SpatialImage,
    template_mask: nib.spatialimages.SpatialImage,
    warped_t1w: nib.spatialimages.SpatialImage,
    warped_mask: nib.spatialimages.SpatialImage,
    forward: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """QC metrics of a registration (see the module docstring). All images on the template grid.

    Parameters
    ----------
    template, template_mask : nibabel images
    warped_t1w, warped_mask : nibabel images
        Subject T1w and brain mask resampled onto the template grid.
    forward : path-like, optional
        The template → subject transform file; without it the Jacobian metrics are NaN.
    """
    omega = np.asarray(template_mask.get_fdata()) > 0.5
    t = np.asarray(template.get_fdata(dtype=np.float32))
    s = np.asarray(warped_t1w.get_fdata(dtype=np.float32))
    b = np.asarray(warped_mask.get_fdata()) > 0.5
    tv, sv = t[omega], s[omega]
    rank_s = rank_normalize(s, omega)[omega] if np.ptp(sv) > 0 else np.zeros_like(sv)
    rank_t = rank_normalize(t, omega)[omega]
    out = {
        "mi": mutual_information(rank_t, rank_s, bins=32),
        "rank_corr": float(stats.spearmanr(tv, sv).statistic) if np.ptp(sv) > 0 else 0.0,
        "dice": float(2 * np.sum(b & omega) / max(np.sum(b) + np.sum(omega), 1)),
    }
    if forward is not None:
        out.update(jacobian_stats(template, forward, omega))
    else:
        out.update({k: float("nan") for k in QC_COLUMNS[3:]})
    return {k: float(out[k]) for k in QC_COLUMNS}


def qc_failures(metrics: dict[str, float], options: AnatOptions) -> list[str]:
    """Names (with values and thresholds) of the metrics outside the configured QC limits."""
    failed = []
    checks = (
        ("mi", options.qc_min_mi, ">="),
        ("rank_corr", options.qc_min_rank_corr, ">="),
        ("dice", options.qc_min_dice, ">="),
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
