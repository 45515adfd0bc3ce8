"""Time-shift invariance of amplitude spectra, ALFF and fALFF (exact, for every circular shift)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.func.spectral import alff, amplitude_spectrum


def test_exact_circular_shift_invariance(rng):
    x = rng.normal(size=(97, 5)).cumsum(axis=0)  # odd length, drifting series
    freqs, amp = amplitude_spectrum(x, 2.0)
    a, f = alff(x, 2.0)
    for shift in range(1, x.shape[0]):
        xs = np.roll(x, shift, axis=0)
        np.testing.assert_allclose(amplitude_spectrum(xs, 2.0)[1], amp, rtol=1e-12, atol=1e-12)
        a_s, f_s = alff(xs, 2.0)
        np.testing.assert_allclose(a_s, a, rtol=1e-12)
        np.testing.assert_allclose(f_s, f, rtol=1e-12)
    # a non-circular shift (crop) is not invariant: the test can fail
    assert not np.allclose(alff(x[1:], 2.0)[0], alff(x[:-1], 2.0)[0], rtol=1e-6)


def test_alff_of_sinusoids():
    tr, n = 2.0, 200
    t = np.arange(n) * tr
    k_in, k_out = 10, 60  # frequencies k / (n tr): 0.025 Hz (in band), 0.15 Hz (out)
    x = 3 * np.sin(2 * np.pi * k_in * t / (n * tr)) + np.sin(2 * np.pi * k_out * t / (n * tr))
    freqs, amp = amplitude_spectrum(x[:, None], tr)
    assert amp[k_in, 0] == pytest.approx(3.0) and amp[k_out, 0] == pytest.approx(1.0)
    a, f = alff(x[:, None], tr)
    band = (freqs >= 0.01) & (freqs <= 0.08)
    assert a[0] == pytest.approx(3.0 / band.sum())
    assert f[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no frequency in the ALFF band"):
        alff(x[:5, None], tr, (0.01, 0.02))
