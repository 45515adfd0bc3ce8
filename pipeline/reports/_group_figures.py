"""Group report figures: registration QC distributions, harmonization embedding, training curves,
leave-site-out accuracy of the ROI models."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.reports._render import Figure, save_figure

logger = logging.getLogger(__name__)


def site_labels(subjects: pd.Index, sites: pd.Series | None) -> pd.Series:
    """The site of each subject in ``subjects``, matched on labels without ``sub-`` as text.

    Parameters
    ----------
    subjects : Index
        Participant labels of the embedding (``01`` or ``sub-01``).
    sites : Series or None
        Site per participant, indexed by label (from ``participants.tsv``).

    Returns
    -------
    Series
        Indexed like ``subjects``: the site, ``"unknown"`` (logged) where ``sites`` has none, or
        ``"all"`` for every subject when ``sites`` is None.
    """
    if sites is None:
        return pd.Series("all", index=subjects)
    keys = pd.Index(subjects.astype(str)).str.removeprefix("sub-")
    by_label = sites.set_axis(pd.Index(sites.index.astype(str)).str.removeprefix("sub-"))
    by_label = by_label[~by_label.index.duplicated()]
    site = pd.Series(by_label.reindex(keys).to_numpy(), index=subjects).fillna("unknown")
    missing = site.index[site == "unknown"]
    if len(missing):
        logger.warning("no site in participants.tsv for %s", ", ".join(map(str, missing)))
    return site.astype(str)


def embedding_figure(
    table: pd.DataFrame,
    sites: pd.Series | None,
    out: Path,
    html_dir: Path,
    highlight: str | None = None,
) -> Figure:
    """Subjects on the first two principal axes of GM features, before and after ComBat."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    site = site_labels(table.index, sites)
    for ax, stage in zip(axes, ("before", "after"), strict=True):
        for name in sorted(site.unique()):
            sel = site == name
            ax.scatter(
                table.loc[sel, f"pc1_{stage}"],
                table.loc[sel, f"pc2_{stage}"],
                s=18,
                label=name,
                alpha=0.8,
            )
        if highlight is not None and highlight in table.index:
            ax.scatter(
                table.loc[highlight, f"pc1_{stage}"],
                table.loc[highlight, f"pc2_{stage}"],
                s=160,
                facecolors="none",
                edgecolors="red",
                linewidths=2,
                label=f"sub-{highlight}",
            )
        ax.set_title(f"{stage} harmonization", fontsize=9)
        ax.set_xlabel("PC1", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("PC2", fontsize=8)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    who = f"sub-{highlight} (red circle) among all subjects" if highlight else "Subjects"
    return save_figure(
        fig,
        out,
        html_dir,
        f"{who} on the first two principal axes of grey-matter features (axes fitted "
        "before harmonization, shared by both panels), coloured by site.",
    )


def qc_distribution_figure(
    qc: pd.DataFrame, thresholds: dict[str, tuple[str, float]], out: Path, html_dir: Path
) -> Figure | None:
    """One strip per registration QC metric (a dot per subject), thresholds dashed."""
    metrics = [c for c in qc.columns if pd.api.types.is_numeric_dtype(qc[c])]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 3), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, col in zip(axes[0], metrics, strict=True):
        vals = qc[col].to_numpy(dtype=float)
        ax.scatter(rng.uniform(-0.2, 0.2, len(vals)), vals, s=14, alpha=0.8)
        ax.boxplot(vals[np.isfinite(vals)], positions=[0], widths=0.6, showfliers=False)
        if col in thresholds:
            kind, value = thresholds[col]
            ax.axhline(value, color="red", ls="--", lw=0.8)
            ax.set_xlabel(f"{kind} {value:g}", fontsize=7, color="red")
        ax.set_title(col, fontsize=9)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(
        fig,
        out,
        html_dir,
        "Registration QC across subjects (one dot per subject; red dashes: QC thresholds).",
    )


def training_curves_figure(
    logs: dict[str, pd.DataFrame], out: Path, html_dir: Path
) -> Figure | None:
    """Training loss and every ``test_*`` metric against epoch, one line per model."""
    if not logs:
        return None
    cols = ["train_loss"] + sorted(
        {c for t in logs.values() for c in t.columns if c.startswith("test_")}
    )
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        for name, table in logs.items():
            if col in table and "epoch" in table:
                ax.plot(table["epoch"], table[col], marker="o", ms=3, label=name)
        values = [v for t in logs.values() if col in t for v in t[col].dropna()]
        if col.endswith("loss") and values and min(values) > 0:
            ax.set_yscale("log")  # classifier and VAE (ELBO) losses differ by orders of magnitude
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, html_dir, "Training curves of the trained models.")


def difference_map_figure(
    tmaps: dict[str, Path], centre_mm, out: Path, html_dir: Path, caption: str
) -> Figure:
    """Orthogonal slices of each GM difference t-map through ``centre_mm`` (one row per map)."""
    from nilearn import plotting

    fig, axes = plt.subplots(len(tmaps), 1, figsize=(8, 2.6 * len(tmaps)), squeeze=False)
    for ax, (name, path) in zip(axes[:, 0], tmaps.items(), strict=True):
        plotting.plot_stat_map(
            str(path),
            cut_coords=tuple(centre_mm),
            axes=ax,
            title=name,
            colorbar=True,
            draw_cross=True,
            annotate=False,
        )
    return save_figure(fig, out, html_dir, caption)


def roi_accuracy_figure(
    folds: pd.DataFrame,
    chance: dict[str, float],
    labels: dict[str, str],
    out: Path,
    html_dir: Path,
) -> Figure | None:
    """Held-out accuracy of each model in each leave-site-out fold, one panel per run.

    ``folds`` as :func:`~pipeline.reports._group_data.roi_fold_accuracies` returns it; a dot per
    fold (site), the pooled accuracy over every held-out subject as a bar, the run's chance level
    (majority class) dashed.
    """
    if folds.empty:
        return None
    runs = list(dict.fromkeys(folds["run"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, run in zip(axes[0], runs, strict=True):
        sub = folds[folds["run"] == run]
        models = list(dict.fromkeys(sub["model"]))
        for i, model in enumerate(models):
            rows = sub[sub["model"] == model]
            n = rows["n_test"].to_numpy(dtype=float)
            pooled = float(np.average(rows["accuracy"], weights=n if n.sum() > 0 else None))
            ax.bar(i, pooled, width=0.6, alpha=0.35)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(rows)), rows["accuracy"], s=16, zorder=3)
        if run in chance:
            ax.axhline(chance[run], color="grey", ls="--", lw=0.8, label="chance")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([labels.get(m, m) for m in models], fontsize=7, rotation=15)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(run, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, html_dir, ROI_ACCURACY_CAPTION)


ROI_ACCURACY_CAPTION = (
    "Leave-site-out accuracy of the ROI models and the baselines: a dot per held-out site, bars "
    "pooled over every held-out subject, dashes the majority-class chance level."
)
