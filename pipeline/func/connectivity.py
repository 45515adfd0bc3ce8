r"""Functional connectivity between ROI time series (nilearn ``ConnectivityMeasure``) and Fisher z.

Participant level: Pearson correlation and partial correlation, Fisher-transformed
:math:`z = \operatorname{artanh}(r)` (diagonal set to 0). Tangent-space connectivity needs a group
(the tangent space at the group's geometric mean), so it is computed by
:func:`group_connectivity` over several subjects' time series.

ROIs whose series are missing (NaN: a sphere outside the mask) or constant get NaN rows and
columns, so that matrices of different subjects stay aligned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: participant-level measures: config name → (nilearn kind, BIDS ``meas-`` value)
MEASURES = {
    "correlation": ("correlation", "PearsonCorrelation"),
    "partial correlation": ("partial correlation", "PartialCorrelation"),
    "tangent": ("tangent", "Tangent"),
}


def fisher_z(matrix: np.ndarray, clip: float = 1.0 - 1e-7) -> np.ndarray:
    """Fisher's :math:`z=\\operatorname{artanh}(r)` with :math:`r` clipped to ±``clip``; diagonal 0."""
    r = np.clip(np.asarray(matrix, dtype=float), -clip, clip)
    z = np.arctanh(r)
    if z.ndim == 2 and z.shape[0] == z.shape[1]:
        np.fill_diagonal(z, 0.0)
    return z


def _valid(ts: np.ndarray) -> np.ndarray:
    """Series that are finite and not constant (relative to their scale)."""
    finite = np.all(np.isfinite(ts), axis=0)
    sd = np.nanstd(ts, axis=0)
    scale = np.nanmax(np.abs(ts), axis=0) if ts.size else np.zeros(ts.shape[1])
    return finite & (sd > 1e-8 * np.maximum(scale, 1e-30))


def connectivity(
    timeseries: np.ndarray, kind: str = "correlation", *, z: bool = True
) -> np.ndarray:
    """Connectivity matrix ``(N, N)`` of one subject's ROI series ``(T, N)``."""
    from nilearn.connectome import ConnectivityMeasure

    if kind not in ("correlation", "partial correlation"):
        raise ValueError(
            f"participant-level connectivity kind must be 'correlation' or 'partial correlation', "
            f"got {kind!r} (tangent needs a group: use group_connectivity)"
        )
    ts = np.asarray(timeseries, dtype=float)
    n = ts.shape[1]
    ok = _valid(ts)
    out = np.full((n, n), np.nan)
    if ok.sum() >= 2:
        measure = ConnectivityMeasure(kind=kind, standardize="zscore_sample")
        try:
            mat = measure.fit_transform([ts[:, ok]])[0]
        except np.linalg.LinAlgError:
            logger.warning("%s: singular covariance (%d volumes, %d ROIs)", kind, *ts.shape)
            return out
        if z:
            mat = fisher_z(mat)
        out[np.ix_(ok, ok)] = mat
    return out


def group_connectivity(
    timeseries: Sequence[np.ndarray], kind: str = "tangent", *, z: bool = False
) -> np.ndarray:
    """Connectivity ``(S, N, N)`` of several subjects (ROIs valid in every subject only)."""
    from nilearn.connectome import ConnectivityMeasure

    series = [np.asarray(t, dtype=float) for t in timeseries]
    ok = np.logical_and.reduce([_valid(t) for t in series])
    measure = ConnectivityMeasure(kind=kind, standardize="zscore_sample")
    mats = measure.fit_transform([t[:, ok] for t in series])
    if z and kind in ("correlation", "partial correlation"):
        mats = np.stack([fisher_z(m) for m in mats])
    n = series[0].shape[1]
    out = np.full((len(series), n, n), np.nan)
    for s, m in enumerate(mats):
        out[s][np.ix_(ok, ok)] = m
    return out


def matrix_frame(matrix: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """A labelled square table (for a ``_relmat.tsv``)."""
    return pd.DataFrame(matrix, index=list(names), columns=list(names))
