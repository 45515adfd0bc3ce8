"""Functional report figures: reference and mask, BOLD-to-T1w edges, traces, carpet, tSNR, matrices."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.reports._render import Figure, save_figure
from pipeline.reports._slices import Contour, canonical, mosaic

logger = logging.getLogger(__name__)

#: confounds shown in the correlation matrix: base columns (no expansions, no spikes, no cosines)
_EXPANDED = ("_derivative1", "_power2", "motion_outlier", "non_steady_state", "cosine")


def _on_grid(path: Path, ref: nib.Nifti1Image, interpolation: str = "continuous") -> np.ndarray:
    from nilearn.image import resample_to_img

    img = nib.load(path)
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        if img.ndim == 4:
            img = img.slicer[..., 0]
        img = resample_to_img(img, ref, interpolation=interpolation)
    return canonical(img)[0]


def reference_figure(boldref: Path, mask: Path | None, out: Path, html_dir: Path) -> Figure:
    """BOLD reference with its brain-mask outline."""
    ref_img = nib.load(boldref)
    bg, zooms = canonical(ref_img)
    contours = (
        [Contour(_on_grid(mask, ref_img, "nearest"), "red", 0.5, "BOLD mask")] if mask else []
    )
    fig = mosaic(bg, zooms, contours=contours, extent=bg)
    return save_figure(
        fig, out, html_dir, "BOLD reference (template space) with its brain mask (red)."
    )


def coreg_figure(boldref: Path, wm_probseg: Path, out: Path, html_dir: Path) -> Figure:
    """BOLD reference with the subject's white-matter boundary (from the T1w) drawn over it."""
    ref_img = nib.load(boldref)
    bg, zooms = canonical(ref_img)
    wm = _on_grid(wm_probseg, ref_img, "linear")
    fig = mosaic(
        bg, zooms, contours=[Contour(wm, "deepskyblue", 0.5, "T1w WM boundary")], extent=bg
    )
    return save_figure(
        fig,
        out,
        html_dir,
        "BOLD to T1w registration: the BOLD reference with the white-matter boundary of the "
        "subject's T1w (blue); the edge should follow the BOLD grey/white contrast.",
    )


def tsnr_figure(tsnr: Path, background: Path | None, out: Path, html_dir: Path) -> Figure:
    """tSNR map over the BOLD reference (or alone)."""
    t_img = nib.load(tsnr)
    t, zooms = canonical(t_img)
    bg = _on_grid(background, t_img) if background else t
    fig = mosaic(bg, zooms, overlay=t, overlay_cmap="viridis", overlay_label="tSNR", extent=t)
    med = float(np.median(t[t > 0])) if np.any(t > 0) else 0.0
    return save_figure(fig, out, html_dir, f"Temporal SNR (median {med:.1f} in the brain).")


def traces_figure(
    confounds: pd.DataFrame, fd_threshold: float | None, out: Path, html_dir: Path
) -> Figure:
    """Motion parameters, framewise displacement and DVARS against volume index."""
    panels = [
        ("translation (mm)", [c for c in ("trans_x", "trans_y", "trans_z") if c in confounds]),
        ("rotation (rad)", [c for c in ("rot_x", "rot_y", "rot_z") if c in confounds]),
        ("FD (mm)", [c for c in ("framewise_displacement",) if c in confounds]),
        ("DVARS", [c for c in ("std_dvars", "dvars") if c in confounds][:1]),
    ]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 1.4 * len(panels)), sharex=True, squeeze=False
    )
    for ax, (label, cols) in zip(axes[:, 0], panels, strict=True):
        for c in cols:
            ax.plot(confounds[c].to_numpy(dtype=float), lw=0.9, label=c)
        if label.startswith("FD") and fd_threshold:
            ax.axhline(
                fd_threshold, color="red", ls="--", lw=0.8, label=f"threshold {fd_threshold}"
            )
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right", ncol=4)
    axes[-1, 0].set_xlabel("volume", fontsize=8)
    fig.tight_layout()
    return save_figure(
        fig, out, html_dir, "Head-motion parameters, framewise displacement and DVARS."
    )


def carpet_figure(carpet: pd.DataFrame, fd: np.ndarray | None, out: Path, html_dir: Path) -> Figure:
    """Carpet plot: z-scored voxel series (rows) over time, grouped by tissue, FD above."""
    data = carpet.to_numpy(dtype=float).T  # voxels x time
    tissues = [c.rsplit("_", 1)[0] for c in carpet.columns]
    ratios = [1, 5] if fd is not None else [5]
    fig, axes = plt.subplots(
        len(ratios),
        1,
        figsize=(9, 4),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": ratios},
    )
    if fd is not None:
        axes[0, 0].plot(fd, color="k", lw=0.8)
        axes[0, 0].set_ylabel("FD", fontsize=7)
        axes[0, 0].tick_params(labelsize=6)
    ax = axes[-1, 0]
    ax.imshow(data, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest")
    bounds, start = [], 0
    for i in range(1, len(tissues) + 1):
        if i == len(tissues) or tissues[i] != tissues[start]:
            bounds.append((start, i, tissues[start]))
            start = i
    for lo, hi, name in bounds:
        ax.axhline(hi - 0.5, color="red", lw=0.6)
        ax.text(-0.5, (lo + hi) / 2, name, color="red", fontsize=7, ha="right", va="center")
    ax.set_yticks([])
    ax.set_xlabel("volume", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, out, html_dir, "Carpet plot: z-scored voxel time series by tissue.")


def confound_corr_figure(confounds: pd.DataFrame, out: Path, html_dir: Path) -> Figure | None:
    """Correlation matrix of the base confound columns (at most 30)."""
    cols = [c for c in confounds.columns if not any(x in c for x in _EXPANDED)][:30]
    if len(cols) < 2:
        return None
    corr = confounds[cols].astype(float).corr().fillna(0.0).to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(cols)), cols, fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    fig.tight_layout()
    return save_figure(fig, out, html_dir, "Correlations between confound time series.")


def relmat_figure(path: Path, out: Path, html_dir: Path) -> Figure | None:
    """A connectivity matrix TSV (square, with or without an index column)."""
    table = pd.read_csv(path, sep="\t")
    if table.shape[1] == table.shape[0] + 1:
        table = table.set_index(table.columns[0])
    mat = table.to_numpy(dtype=float)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        return None
    mat = mat.copy()
    np.fill_diagonal(mat, 0.0)
    lim = float(np.nanpercentile(np.abs(mat), 99)) or 1.0
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel("ROI", fontsize=8)
    ax.set_ylabel("ROI", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    name = path.name.split("_", 1)[1].removesuffix("_relmat.tsv")
    return save_figure(fig, out, html_dir, f"Connectivity matrix ({name}; diagonal zeroed).")
