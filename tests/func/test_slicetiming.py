"""Slice-timing correction brings every slice to the reference time."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.func.slicetiming import reference_time, slice_time_correct


def test_slice_timing_recovers_reference_time_samples():
    tr, n_vol, n_slices = 2.0, 60, 8
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    st = np.empty(n_slices)
    st[order] = np.arange(n_slices) * tr / n_slices
    ref = reference_time(st)
    assert ref == pytest.approx((st.max() + st.min()) / 2)

    def signal(t):
        return np.sin(2 * np.pi * 0.04 * t) + 0.5 * np.cos(2 * np.pi * 0.07 * t + 1.0)

    data = np.empty((2, 3, n_slices, n_vol), dtype=np.float32)
    for s in range(n_slices):
        data[:, :, s, :] = signal(np.arange(n_vol) * tr + st[s])
    target = signal(np.arange(n_vol) * tr + ref)
    corrected = slice_time_correct(data, st, tr, axis=2)
    inner = slice(2, -2)  # the spline holds the end values outside the sampled range
    before = np.abs(data[0, 0, :, inner] - target[inner]).max()
    after = np.abs(corrected[0, 0, :, inner] - target[inner]).max()
    assert after < 0.01 < before
    # slice axis other than the last spatial one
    moved = np.moveaxis(data, 2, 0)
    np.testing.assert_allclose(
        np.moveaxis(slice_time_correct(moved, st, tr, axis=0), 0, 2), corrected, atol=1e-5
    )
    with pytest.raises(ValueError, match="SliceTiming has 8 entries but the BOLD has 3"):
        slice_time_correct(data, st, tr, axis=1)
