"""QC figures of the harmonization (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.io import atomic_path  # noqa: E402


def _save(fig: Any, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return dest


def plot_site_prediction(before: dict, after: dict, dest: Path) -> Path:
    """Bar chart of the site-prediction balanced accuracy before/after, with chance level."""
    fig, ax = plt.subplots(figsize=(4, 3.2))
    scores = [before["balanced_accuracy"], after["balanced_accuracy"]]
    ax.bar(["before", "after"], scores, color=["#c44e52", "#4c72b0"])
    ax.axhline(before["chance"], ls="--", color="k", lw=1, label="chance")
    for i, res in enumerate((before, after)):
        ax.text(i, scores[i] + 0.02, f"p={res['p_value']:.3g}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("site balanced accuracy (CV)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Site predictability")
    return _save(fig, dest)


def plot_effect_maps(before: pd.DataFrame, after: pd.DataFrame, dest: Path) -> Path:
    """Per-feature t-statistics of each biological term, before vs after harmonization."""
    terms = list(before.index)[:4]
    fig, axes = plt.subplots(1, max(1, len(terms)), figsize=(3.2 * max(1, len(terms)), 3.2))
    for ax, term in zip(np.atleast_1d(axes), terms, strict=False):
        b, a = before.loc[term].to_numpy(), after.loc[term].to_numpy()
        ax.scatter(b, a, s=4, alpha=0.5)
        lim = np.nanmax(np.abs(np.concatenate([a, b]))) * 1.05 or 1.0
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("t before")
        ax.set_ylabel("t after")
    return _save(fig, dest)


def plot_site_means(before: np.ndarray, after: np.ndarray, site: np.ndarray, dest: Path) -> Path:
    """Distribution of the first principal component (of the raw data) per site."""
    centre = before.mean(0)
    _, _, vt = np.linalg.svd(before - centre, full_matrices=False)
    sites = sorted(set(site.tolist()), key=str)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, data, title in ((axes[0], before, "before"), (axes[1], after, "after")):
        pc = (data - centre) @ vt[0]
        ax.boxplot([pc[site == s] for s in sites], tick_labels=[str(s) for s in sites])
        ax.set_title(f"PC1 by site, {title}")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    return _save(fig, dest)
