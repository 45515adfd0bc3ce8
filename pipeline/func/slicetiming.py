r"""Slice-timing correction: resample every slice's time series to one reference time.

Slice :math:`s` of volume :math:`n` is acquired at :math:`nT + \tau_s` (``SliceTiming``
:math:`\tau`, repetition time :math:`T`). Its series is interpolated with a cubic spline at
:math:`nT + \tau_{ref}`, :math:`\tau_{ref} = \min\tau + r(\max\tau - \min\tau)` (fMRIPrep's
``SliceTimingRef`` :math:`r`, default 0.5). Times outside the acquired range hold the end values.

Which voxel slice each ``SliceTiming`` entry describes follows BIDS' ``SliceEncodingDirection``
(``i``, ``j``, ``k``, optionally with ``-``): the entries are listed along that voxel axis, and a
``-`` direction lists them from the last slice to the first (entry 0 is the slice of highest
index), so its times are reversed before they are matched to voxel indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import CubicSpline

logger = logging.getLogger(__name__)

_AXES = {"i": 0, "j": 1, "k": 2}


def parse_slice_direction(direction: str) -> tuple[int, bool]:
    """Voxel axis and reversal of a BIDS ``SliceEncodingDirection`` (``"k-"`` → ``(2, True)``)."""
    if direction not in {"i", "j", "k", "i-", "j-", "k-"}:
        raise ValueError(
            f"SliceEncodingDirection must be one of i, j, k, i-, j-, k-, got {direction!r}"
        )
    return _AXES[direction.rstrip("-")], direction.endswith("-")


def slice_times_by_index(
    slice_times: Sequence[float], direction: str | None = None, axis: int = 2
) -> tuple[int, np.ndarray]:
    """Voxel axis of the slices and the acquisition time of each voxel slice, in index order.

    Parameters
    ----------
    slice_times : sequence of float
        BIDS ``SliceTiming`` (s), listed along ``direction``.
    direction : str or None
        BIDS ``SliceEncodingDirection``; None: ``axis``, in index order.
    axis : int, default=2
        Slice axis when ``direction`` is None.
    """
    st = np.asarray(slice_times, dtype=float)
    if direction is None:
        return int(axis), st
    ax, reverse = parse_slice_direction(direction)
    return ax, st[::-1].copy() if reverse else st


def reference_time(slice_times: Sequence[float], ref: float = 0.5) -> float:
    """The acquisition time (s, within a TR) every slice is corrected to."""
    st = np.asarray(slice_times, dtype=float)
    return float(st.min() + ref * (st.max() - st.min()))


def slice_time_correct(
    data: np.ndarray,
    slice_times: Sequence[float],
    tr: float,
    *,
    axis: int | None = None,
    ref: float = 0.5,
    direction: str | None = None,
) -> np.ndarray:
    """Slice-timing-corrected copy of a 4-D run.

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
    slice_times : sequence of float
        Acquisition time (s) of each slice, as in BIDS ``SliceTiming``.
    tr : float
        Repetition time (s).
    axis : int or None
        Voxel axis of the slices, with ``slice_times`` in index order (default 2). With
        ``direction`` it may be left out; if given it must agree.
    ref : float, default=0.5
        Reference as a fraction of the slice-time range.
    direction : str or None
        BIDS ``SliceEncodingDirection`` (``i``, ``j``, ``k``, ``i-``, ``j-``, ``k-``): the axis,
        and for ``-`` the reversed order of ``slice_times``.

    Returns
    -------
    ndarray of float32, same shape as ``data``
    """
    data = np.asarray(data, dtype=np.float32)
    if direction is not None:
        ax, st = slice_times_by_index(slice_times, direction)
        if axis is not None and axis != ax:
            raise ValueError(
                f"slice axis {axis} disagrees with SliceEncodingDirection {direction!r}"
            )
        axis = ax
    else:
        axis = 2 if axis is None else int(axis)
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
