r"""Time-shift-invariant features: amplitude spectra, ALFF and fALFF.

When a resting-state scan starts is arbitrary: features should not depend on it. For a series
:math:`x_t` of length :math:`n` (mean removed), the amplitude spectrum
:math:`A_k = |\hat x_k|\cdot 2/n`, :math:`\hat x_k=\sum_t x_t e^{-2\pi i k t/n}`, is exactly
invariant to circular shifts :math:`x_t \mapsto x_{t+s \bmod n}` (a shift multiplies
:math:`\hat x_k` by a unit phase :math:`e^{2\pi i k s/n}`). From it:

.. math::

    \mathrm{ALFF} = \frac{1}{|B|}\sum_{k \in B} A_k, \qquad
    \mathrm{fALFF} = \frac{\sum_{k\in B} A_k}{\sum_{k>0} A_k},

with :math:`B` the frequencies in the band (default 0.01–0.08 Hz, Zang et al. 2007; Zou et al.
2008). Only operations that commute with circular shifts are used (no detrending, no tapering), so
the invariance is exact up to floating-point rounding.
"""

from __future__ import annotations

import numpy as np


def amplitude_spectrum(timeseries: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (Hz) and one-sided amplitude spectrum of series ``(T, …)`` along axis 0."""
    x = np.asarray(timeseries, dtype=np.float64)
    n = x.shape[0]
    x = x - x.mean(axis=0, keepdims=True)
    amp = np.abs(np.fft.rfft(x, axis=0)) * (2.0 / n)
    return np.fft.rfftfreq(n, tr), amp


def alff(
    timeseries: np.ndarray, tr: float, band: tuple[float, float] = (0.01, 0.08)
) -> tuple[np.ndarray, np.ndarray]:
    """ALFF and fALFF of series ``(T, …)`` (per column / voxel)."""
    freqs, amp = amplitude_spectrum(timeseries, tr)
    inband = (freqs >= band[0]) & (freqs <= band[1])
    if not inband.any():
        raise ValueError(
            f"no frequency in the ALFF band {band} Hz for {np.asarray(timeseries).shape[0]} "
            f"volumes at TR {tr} s (resolution {freqs[1] if freqs.size > 1 else 0:.4f} Hz)"
        )
    total = amp[1:].sum(axis=0)
    a = amp[inband].mean(axis=0)
    f = np.divide(amp[inband].sum(axis=0), total, out=np.zeros_like(a), where=total > 0)
    return a, f
