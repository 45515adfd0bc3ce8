"""Temporal gauge and denoising presets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.func.denoise import PRESETS, bandpass, denoise, preset_confounds, temporal_gauge
from pipeline.func.motion import MOTION_COLUMNS


def test_temporal_gauge(rng):
    x = 37.0 * (10 + rng.normal(size=(50, 40)))
    scaled, factor = temporal_gauge(x, "grand_mean")
    assert scaled.mean() == pytest.approx(1000.0) and factor == pytest.approx(1000 / x.mean())
    psc, _ = temporal_gauge(x, "psc")
    np.testing.assert_allclose(psc.mean(axis=1), 0, atol=1e-9)
    z, _ = temporal_gauge(x, "zscore")
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-9)
    # invariance: the gauge removes a global gain
    np.testing.assert_allclose(temporal_gauge(3 * x)[0], scaled, rtol=1e-12)
    with pytest.raises(ValueError, match="scaling must be one of"):
        temporal_gauge(x, "median")


@pytest.fixture
def confounds(rng):
    n = 500
    table = pd.DataFrame(rng.normal(size=(n, 6)), columns=list(MOTION_COLUMNS))
    for c in MOTION_COLUMNS:
        table[f"{c}_derivative1"] = table[c].diff()
        table[f"{c}_power2"] = table[c] ** 2
        table[f"{c}_derivative1_power2"] = table[f"{c}_derivative1"] ** 2
    for j in range(5):
        table[f"a_comp_cor_{j:02d}"] = rng.normal(size=n)
    table["global_signal"] = rng.normal(size=n)
    return table


def test_preset_confounds(confounds):
    assert preset_confounds(confounds, PRESETS["nofilt_noglobal"]).shape == (500, 24 + 5 + 2)
    assert preset_confounds(confounds, PRESETS["filt_global"]).shape == (500, 24 + 5 + 1 + 2)
    assert np.isfinite(preset_confounds(confounds, PRESETS["filt_global"])).all()


def test_denoise_removes_confounds_and_filters(confounds, rng):
    tr, n = 2.0, 500
    t = np.arange(n) * tr
    slow = np.sin(2 * np.pi * 0.05 * t)  # in band
    fast = np.sin(2 * np.pi * 0.2 * t)  # out of band
    sig = np.column_stack([slow + 3 * confounds["global_signal"] + fast, slow]) + 100
    clean = denoise(sig, confounds, tr, "filt_global")
    np.testing.assert_allclose(clean.mean(axis=0), sig.mean(axis=0))  # mean kept
    assert abs(np.corrcoef(clean[:, 0], confounds["global_signal"])[0, 1]) < 0.05
    assert np.corrcoef(clean[:, 0], slow)[0, 1] > 0.85
    spectrum = np.abs(np.fft.rfft(clean[:, 0] - clean[:, 0].mean()))
    freqs = np.fft.rfftfreq(n, tr)
    assert spectrum[freqs > 0.1].max() < 1e-8 * spectrum.max() + 1e-10
    with pytest.raises(ValueError, match="unknown denoising preset"):
        denoise(sig, confounds, tr, "filt_magic")


def test_denoise_matches_nilearn_without_filter(confounds, rng):
    from nilearn import signal

    sig = rng.normal(size=(500, 3)) + 5
    ours = denoise(sig, confounds, 2.0, "nofilt_noglobal")
    conf = preset_confounds(confounds, PRESETS["nofilt_noglobal"])
    ref = signal.clean(sig, confounds=conf, detrend=True, standardize=None, t_r=2.0)
    np.testing.assert_allclose(ours.mean(0), sig.mean(0), atol=1e-10)
    np.testing.assert_allclose(ours - ours.mean(0), ref - ref.mean(0), atol=1e-10)


def test_bandpass_is_ideal(rng):
    x = rng.normal(size=(200, 2))
    y = bandpass(x, 2.0, (0.01, 0.1))
    f = np.fft.rfftfreq(200, 2.0)
    spec = np.abs(np.fft.rfft(y, axis=0))
    assert spec[(f < 0.01) | (f > 0.1)].max() < 1e-10
    band = (f >= 0.01) & (f <= 0.1)
    np.testing.assert_allclose(spec[band], np.abs(np.fft.rfft(x, axis=0))[band], rtol=1e-10)


def test_get_preset_motion_override(confounds):
    from pipeline.func.denoise import get_preset

    six = get_preset("filt_global", "6P")
    assert six.motion == "6P" and six.global_signal and six.band == (0.01, 0.1)
    assert preset_confounds(confounds, six).shape == (500, 6 + 5 + 1 + 2)
    assert get_preset("minimal", "24P").motion == "6P"  # minimal keeps its own model
    with pytest.raises(ValueError, match="motion model must be"):
        get_preset("filt_global", "12P")
