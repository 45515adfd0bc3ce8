r"""Residuals between a derivative computed from transformed inputs and the untransformed one.

For an invariance step :math:`F` (output in template space) and a nuisance element :math:`g`,
the audit reports :math:`d(F(g \cdot x), F(x))` for several distances :math:`d`:

- images: :math:`1 - \rho_S` (Spearman rank correlation inside the reference brain mask: blind to
  monotone intensity changes, which the pipeline is not asked to undo) and the normalised RMS
  difference of z-scored intensities;
- masks: :math:`1 - \text{Dice}`;
- tissue probability maps: mean absolute difference inside the union of masks;
- ROI time series: :math:`1 - \bar r` (mean Pearson correlation over ROIs), after undoing a known
  circular time shift;
- connectivity matrices: RMS difference of the off-diagonal entries (Fisher :math:`z` when the
  entries are correlations).

Every residual is 0 for an exactly invariant pipeline.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = [
    "dice",
    "rank_correlation",
    "zscore_rmsd",
    "probability_mad",
    "timeseries_correlation",
    "connectivity_rmsd",
]


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"outputs to compare differ in shape: {a.shape} vs {b.shape}")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    r""":math:`2|A \cap B| / (|A| + |B|)` of two masks (1 when both are empty)."""
    _check_same_shape(a, b)
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def rank_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Spearman correlation of two images inside ``mask`` (all voxels when None)."""
    _check_same_shape(a, b)
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask) > 0.5
    x, y = np.asarray(a)[m], np.asarray(b)[m]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def zscore_rmsd(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """RMS difference of the two images z-scored inside ``mask``."""
    _check_same_shape(a, b)
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask) > 0.5
    x, y = (np.asarray(v, float)[m] for v in (a, b))
    z = lambda v: (v - v.mean()) / (v.std() + 1e-12)  # noqa: E731
    return float(np.sqrt(np.mean((z(x) - z(y)) ** 2)))


def probability_mad(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference of two probability maps inside ``mask``."""
    _check_same_shape(a, b)
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask) > 0.5
    return float(np.mean(np.abs(np.asarray(a, float)[m] - np.asarray(b, float)[m])))


def timeseries_correlation(a: np.ndarray, b: np.ndarray, time_shift: int = 0) -> float:
    """Mean over columns (ROIs) of the Pearson correlation of two ``(T, n_rois)`` tables, after
    rolling ``b`` back by ``time_shift`` volumes; constant columns are skipped (NaN when all are)."""
    b = np.roll(np.asarray(b, float), -time_shift, axis=0) if time_shift else np.asarray(b, float)
    a = np.asarray(a, float)
    _check_same_shape(a, b)
    r = []
    for i in range(a.shape[1]):
        x, y = a[:, i], b[:, i]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() > 2 and _varies(x[ok]) and _varies(y[ok]):
            r.append(np.corrcoef(x[ok], y[ok])[0, 1])
    return float(np.mean(r)) if r else float("nan")


def _varies(x: np.ndarray, rtol: float = 1e-8) -> bool:
    """Whether a column varies beyond floating-point noise (denoising that uses up every degree
    of freedom leaves a constant plus ~1e-13 ripples, whose correlations mean nothing)."""
    return bool(np.std(x) > rtol * max(float(np.mean(np.abs(x))), 1e-300))


def connectivity_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of the off-diagonal entries of two connectivity matrices (Fisher z when all
    entries lie in [-1, 1]), over the entries finite in both (ROIs outside the BOLD mask have NaN
    rows; NaN only when no entry is left)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    _check_same_shape(a, b)
    off = ~np.eye(a.shape[0], dtype=bool) & np.isfinite(a) & np.isfinite(b)
    if not off.any():
        return float("nan")
    x, y = a[off], b[off]
    if np.all(np.abs(x) <= 1) and np.all(np.abs(y) <= 1):
        x, y = (
            np.arctanh(np.clip(x, -0.999999, 0.999999)),
            np.arctanh(np.clip(y, -0.999999, 0.999999)),
        )
    return float(np.sqrt(np.mean((x - y) ** 2)))
