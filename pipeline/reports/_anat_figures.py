"""Anatomical report figures: brain mask, tissue contours, registration flicker pair, bias field."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.reports._render import Figure, save_figure
from pipeline.reports._slices import Contour, canonical, mosaic

logger = logging.getLogger(__name__)


def mask_figure(t1w: Path, mask: Path, out: Path, html_dir: Path) -> Figure:
    """Brain-mask outline over the preprocessed T1w (native space)."""
    bg, zooms = canonical(nib.load(t1w))
    m, _ = canonical(nib.load(mask))
    fig = mosaic(bg, zooms, contours=[Contour(m, "red", 0.5, "brain mask")], extent=m)
    return save_figure(
        fig, out, html_dir, "Brain mask (red) on the preprocessed T1w, native space."
    )


def tissue_figure(std_t1w: Path, probsegs: dict[str, Path], out: Path, html_dir: Path) -> Figure:
    """GM/WM/CSF probability contours (0.5) over the T1w in template space."""
    bg, zooms = canonical(nib.load(std_t1w))
    colors = {"GM": "lime", "WM": "deepskyblue", "CSF": "orange"}
    contours = [
        Contour(canonical(nib.load(p))[0], colors[k], 0.5, k)
        for k, p in probsegs.items()
        if k in colors
    ]
    brain = sum(c.data for c in contours) if contours else bg
    fig = mosaic(bg, zooms, contours=contours, extent=(brain > 0.5).astype(np.float32))
    return save_figure(
        fig,
        out,
        html_dir,
        "Tissue probability contours at 0.5 (GM green, WM blue, CSF orange) on the T1w in "
        "template space.",
    )


def flicker_pair(
    std_t1w: Path,
    template_t1w: nib.Nifti1Image,
    template_wm: nib.Nifti1Image,
    out_dir: Path,
    html_dir: Path,
    subject: str,
) -> tuple[Figure, Figure]:
    """Same cuts of the subject's T1w in template space and of the template, same pixel size.

    Both carry the template's white-matter outline, so a misregistration shows as anatomy moving
    against a fixed line when the page toggles between them.
    """
    from nilearn.image import resample_to_img

    subj_img = nib.load(std_t1w)
    if template_t1w.shape[:3] != subj_img.shape[:3] or not np.allclose(
        template_t1w.affine, subj_img.affine, atol=1e-3
    ):
        template_t1w = resample_to_img(template_t1w, subj_img, interpolation="continuous")
        template_wm = resample_to_img(template_wm, subj_img, interpolation="linear")
    subj, zooms = canonical(subj_img)
    tmpl, _ = canonical(template_t1w)
    wm, _ = canonical(template_wm)
    extent = (tmpl > np.percentile(tmpl[tmpl > 0], 10)) if np.any(tmpl > 0) else tmpl
    edge = [Contour(wm, "red", 0.5, "template WM")]
    a = save_figure(
        mosaic(subj, zooms, contours=edge, extent=extent),
        out_dir / f"sub-{subject}_desc-flickersubject_T1w.png",
        html_dir,
        "Subject T1w in template space",
    )
    b = save_figure(
        mosaic(tmpl, zooms, contours=edge, extent=extent),
        out_dir / f"sub-{subject}_desc-flickertemplate_T1w.png",
        html_dir,
        "Template T1w",
    )
    return a, b


def estimate_bias(
    raw: np.ndarray, corrected: np.ndarray, mask: np.ndarray, sigma: float = 2.0
) -> np.ndarray:
    r"""Smooth multiplicative bias :math:`b = \mathrm{raw} / \mathrm{corrected}`, median 1 in ``mask``.

    The ratio is taken where both images are positive and the corrected image is above its 5th
    percentile in the mask, then smoothed by normalised convolution (Gaussian, ``sigma`` voxels);
    it is 0 outside ``mask``. All arrays share one grid.
    """
    from scipy.ndimage import gaussian_filter

    m = mask > 0.5
    if not m.any():
        return np.zeros_like(corrected, dtype=np.float32)
    ok = m & (corrected > np.percentile(corrected[m], 5)) & (raw > 0)
    if ok.sum() < 10:
        return np.zeros_like(corrected, dtype=np.float32)
    ratio = np.zeros(corrected.shape, dtype=np.float64)
    ratio[ok] = raw[ok] / corrected[ok]
    ratio[ok] /= np.median(ratio[ok])
    weight = gaussian_filter(ok.astype(np.float64), sigma)
    smooth = gaussian_filter(ratio, sigma) / np.maximum(weight, 1e-3)
    return np.where(m, smooth, 0.0).astype(np.float32)


def bias_field_figure(
    raw_t1w: Path, t1w: Path, mask: Path, out: Path, html_dir: Path
) -> Figure | None:
    """Figure of :func:`estimate_bias` over the corrected T1w; ``None`` when undefined.

    The raw image is resampled onto the corrected grid by world coordinates (reorientation only
    changes the header).
    """
    from nilearn.image import resample_to_img

    pre_img = nib.load(t1w)
    raw_img = nib.load(raw_t1w)
    if raw_img.ndim != 3:
        return None
    raw_on = resample_to_img(raw_img, pre_img, interpolation="continuous")
    pre, zooms = canonical(pre_img)
    raw, _ = canonical(raw_on)
    m = canonical(nib.load(mask))[0] > 0.5
    field = estimate_bias(raw, pre, m)
    if not np.any(field):
        return None
    spread = max(float(np.percentile(np.abs(field[m] - 1), 98)), 0.02)
    fig = mosaic(
        pre,
        zooms,
        overlay=field,
        overlay_cmap="coolwarm",
        overlay_range=(1 - spread, 1 + spread),
        overlay_label="raw / corrected (median 1)",
        extent=m.astype(np.float32),
    )
    return save_figure(
        fig,
        out,
        html_dir,
        "Bias field removed by N4, estimated as raw / corrected intensity (smoothed, median 1 in "
        "the brain).",
    )
