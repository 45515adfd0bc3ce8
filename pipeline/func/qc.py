"""Functional QC: tSNR, motion summary, outlier fraction and carpet-plot data."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_NONFINITE = re.compile(r"(?:(?<=\t)|^)(?:-?inf|nan)(?=\t|$)", re.M)


def tsnr(voxels: np.ndarray) -> np.ndarray:
    """Temporal SNR per voxel: temporal mean / temporal standard deviation (0 where sd = 0)."""
    x = np.asarray(voxels, dtype=np.float64)
    mean, sd = x.mean(axis=-1), x.std(axis=-1)
    return np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)


def carpet(
    voxels: np.ndarray, tissue: np.ndarray, max_rows: int = 600, seed: int = 0
) -> pd.DataFrame:
    """Carpet-plot data: rows are time points, columns sampled voxels grouped by tissue.

    Each voxel series is z-scored over time. Columns are named ``{tissue}_{NNNN}`` and ordered by
    tissue label (``tissue`` holds a label per voxel: ``"gm"``, ``"wm"``, ``"csf"``, …). At most
    ``max_rows`` voxels are kept, spread over tissues in proportion to their size.
    """
    x = np.asarray(voxels, dtype=np.float64)
    tissue = np.asarray(tissue)
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    total = len(tissue)
    for label in sorted(set(tissue.tolist())):
        idx = np.flatnonzero(tissue == label)
        k = max(1, int(round(max_rows * idx.size / max(total, 1))))
        pick = np.sort(rng.choice(idx, size=min(k, idx.size), replace=False))
        for j, v in enumerate(pick):
            s = x[v]
            sd = s.std()
            columns[f"{label}_{j:04d}"] = (s - s.mean()) / sd if sd > 0 else s * 0
    return pd.DataFrame(columns)


def qc_summary(
    confounds: pd.DataFrame, tsnr_values: np.ndarray, n_nonsteady: int, extra: dict
) -> dict:
    """QC record: mean/max FD, outlier count and percentage, median tSNR, plus ``extra``."""
    fd = confounds["framewise_displacement"].to_numpy(dtype=float)
    outliers = [c for c in confounds.columns if c.startswith("motion_outlier_")]
    n = len(confounds)
    return {
        "n_volumes": n,
        "n_nonsteady": int(n_nonsteady),
        "fd_mean": float(np.nanmean(fd)) if n > 1 else 0.0,
        "fd_max": float(np.nanmax(fd)) if n > 1 else 0.0,
        "n_outliers": len(outliers),
        "pct_outliers": 100.0 * len(outliers) / max(n, 1),
        "dvars_mean": float(np.nanmean(confounds["dvars"])) if n > 1 else 0.0,
        "tsnr_median": float(np.median(tsnr_values)) if np.size(tsnr_values) else 0.0,
        **extra,
    }


def format_tsv(frame: pd.DataFrame, *, index: bool = False, digits: int = 6) -> str:
    """Fast TSV text of a numeric table (``%.{digits}g``, missing values as ``n/a``).

    ``DataFrame.to_csv`` with a float format formats value by value in Python; this formats one
    row per call.
    """
    values = frame.to_numpy(dtype=np.float64)
    fmt = "\t".join([f"%.{digits}g"] * values.shape[1])
    header = list(map(str, frame.columns))
    rows = [fmt % tuple(r) for r in values.tolist()]
    if index:
        header = ["", *header]
        rows = [f"{name}\t{row}" for name, row in zip(map(str, frame.index), rows, strict=True)]
    text = "\n".join(["\t".join(header), *rows]) + "\n"
    return _NONFINITE.sub("n/a", text)
