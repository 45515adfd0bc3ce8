r"""Slice-timing correction: resample every slice's time series to one reference time.

Slice :math:`s` of volume :math:`n` is acquired at :math:`nT + \tau_s` (``SliceTiming``
:math:`\tau`, repetition time :math:`T`). Its series is interpolated with a cubic spline at
:math:`nT + \tau_{ref}`, :math:`\tau_{ref} = \min\tau + r(\max\tau - \min\tau)` (fMRIPrep's
``SliceTimingRef`` :math:`r`, default 0.5). Times outside the acquired range hold the end values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import CubicSpline

logger = logging.getLogger(__name__)


def reference_time(slice_times: Sequence[float], ref: float = 0.5) -> float:
    """The acquisition time (s, within a TR) every slice is corrected to."""
    st = np.asarray(slice_times, dtype=float)
    return float(st.min() + ref * (st.max() - st.min()))


def slice_time_correct(
    data: np.ndarray,
    slice_times: Sequence[float],
    tr: float,
    *,
    axis: int = 2,
    ref: float = 0.5,
) -> np.ndarray:
    """Slice-timing-corrected copy of a 4-D run.

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
    slice_times : sequence of float
        Acquisition time (s) of each slice along ``axis``, as in BIDS ``SliceTiming``.
    tr : float
        Repetition time (s).
    axis : int, default=2
        Voxel axis of the slices.
    ref : float, default=0.5
        Reference as a fraction of the slice-time range.

    Returns
    -------
    ndarray of float32, same shape as ``data``
    """
    data = np.asarray(data, dtype=np.float32)
    st = np.asarray(slice_times, dtype=float)
    if st.size != data.shape[axis]:
        raise ValueError(
            f"SliceTiming has {st.size} entries but the BOLD has {data.shape[axis]} slices "
            f"along axis {axis}"
        )
    n_vol = data.shape[3]
    base = np.arange(n_vol) * tr
    target = base + reference_time(st, ref)
    out = np.empty_like(data)
    moved = np.moveaxis(data, axis, 0)
    out_moved = np.moveaxis(out, axis, 0)
    for s in range(st.size):
        times = base + st[s]
        spline = CubicSpline(times, moved[s], axis=-1)
        out_moved[s] = spline(np.clip(target, times[0], times[-1]))
    return out
