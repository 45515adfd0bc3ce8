"""Slice-timing correction brings every slice to the reference time, along SliceEncodingDirection."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.func.slicetiming import (
    parse_slice_direction,
    reference_time,
    slice_time_correct,
    slice_times_by_index,
)

TR, N_VOL = 2.0, 60


def _signal(t):
    return np.sin(2 * np.pi * 0.04 * t) + 0.5 * np.cos(2 * np.pi * 0.07 * t + 1.0)


def _interleaved(n_slices: int) -> np.ndarray:
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    st = np.empty(n_slices)
    st[order] = np.arange(n_slices) * TR / n_slices
    return st


def _errors(data, corrected, target, axis):
    inner = slice(2, -2)  # the spline holds the end values outside the sampled range
    before = np.abs(np.moveaxis(data, axis, 0)[..., inner] - target[inner]).max()
    after = np.abs(np.moveaxis(corrected, axis, 0)[..., inner] - target[inner]).max()
    return before, after


def test_slice_timing_recovers_reference_time_samples():
    n_slices = 8
    st = _interleaved(n_slices)
    ref = reference_time(st)
    assert ref == pytest.approx((st.max() + st.min()) / 2)
    data = np.empty((2, 3, n_slices, N_VOL), dtype=np.float32)
    for s in range(n_slices):
        data[:, :, s, :] = _signal(np.arange(N_VOL) * TR + st[s])
    target = _signal(np.arange(N_VOL) * TR + ref)
    corrected = slice_time_correct(data, st, TR, axis=2)
    before, after = _errors(data, corrected, target, 2)
    assert after < 0.01 < before
    # slice axis other than the last spatial one
    moved = np.moveaxis(data, 2, 0)
    np.testing.assert_allclose(
        np.moveaxis(slice_time_correct(moved, st, TR, axis=0), 0, 2), corrected, atol=1e-5
    )
    with pytest.raises(ValueError, match="SliceTiming has 8 entries but the BOLD has 3"):
        slice_time_correct(data, st, TR, axis=1)


@pytest.mark.parametrize("direction", ["i", "j", "k", "i-", "j-", "k-"])
def test_slice_encoding_direction_and_its_sign(direction):
    """Each voxel slice carries the signal delayed by the time BIDS gives it; correction along the
    declared direction removes the delays, and reading the direction without its sign does not."""
    shape = [5, 6, 7]
    axis = "ijk".index(direction[0])
    n_slices = shape[axis]
    # SliceTiming as BIDS lists it: along the direction (from the last index for "-"); ascending
    # sequential, so reversing the order is far from a no-op
    listed = np.arange(n_slices) * TR / n_slices
    index_times = listed[::-1] if direction.endswith("-") else listed
    data = np.empty((*shape, N_VOL), dtype=np.float32)
    view = np.moveaxis(data, axis, 0)
    for z in range(n_slices):
        view[z] = _signal(np.arange(N_VOL) * TR + index_times[z])
    ref = reference_time(listed)
    target = _signal(np.arange(N_VOL) * TR + ref)
    corrected = slice_time_correct(data, listed, TR, direction=direction)
    before, after = _errors(data, corrected, target, axis)
    assert after < 0.01 < before
    # per slice: each delay is removed (the correction of slice z shifts it by ref - its time)
    per_slice = np.abs(np.moveaxis(corrected, axis, 0)[..., 2:-2] - target[2:-2]).max(
        axis=tuple(range(1, 4))
    )
    assert per_slice.max() < 0.01
    # the sign ignored: wrong for every slice but the middle one
    unsigned = slice_time_correct(data, listed, TR, direction=direction[0])
    if direction.endswith("-"):
        assert _errors(data, unsigned, target, axis)[1] > 0.1
    assert slice_times_by_index(listed, direction)[0] == axis
    np.testing.assert_array_equal(slice_times_by_index(listed, direction)[1], index_times)


def test_direction_checks():
    assert parse_slice_direction("k-") == (2, True)
    assert parse_slice_direction("i") == (0, False)
    for bad in ("x", "k--", "-k", "", None):
        with pytest.raises(ValueError, match="SliceEncodingDirection"):
            parse_slice_direction(bad)
    data = np.zeros((4, 5, 6, 10), np.float32)
    with pytest.raises(ValueError, match="disagrees"):
        slice_time_correct(data, np.arange(5) * 0.1, TR, axis=2, direction="j-")
    with pytest.raises(ValueError, match="6 entries but the BOLD has 5 slices along axis 1"):
        slice_time_correct(data, np.arange(6) * 0.1, TR, direction="j")
