r"""Temporal gauge and nuisance regression presets.

**Temporal gauge.** The BOLD scale is arbitrary (receiver gain, coil): ``grand_mean`` multiplies
the run by :math:`1000/\bar y` (:math:`\bar y` the 4-D mean inside the brain mask), as CCS/C-PAC
did for ABIDE; ``psc`` expresses each voxel in percent of its temporal mean,
:math:`100\,(y_t-\bar y_v)/\bar y_v`; ``zscore`` standardises each voxel over time.

**Denoising presets** (ABIDE Preprocessed's four strategies, plus ``minimal``: 6P + trends, for
short runs): the ABIDE presets regress the 24 motion parameters (Friston), the first aCompCor
components, linear/quadratic trends and, for ``*_global``, the global signal; ``filt_*``
band-passes 0.01–0.1 Hz. Regression and filtering are linear in the signal, so applying them to
ROI means equals averaging cleaned voxels.

As in C-PAC's ABIDE pipeline, confounds are regressed first (:func:`nilearn.signal.clean`, no
filtering) and the residuals are band-passed afterwards with an ideal FFT filter (AFNI
``3dBandpass`` style). Filtering the confounds too and regressing within the band (nilearn's
simultaneous approach) is better in theory but leaves no degrees of freedom in short runs: a
60-volume run at TR 2 s has about 20 dimensions in 0.01–0.1 Hz, fewer than the 32 regressors of
``filt_global``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SCALINGS = ("grand_mean", "psc", "zscore", "none")


def temporal_gauge(
    voxels: np.ndarray, method: str = "grand_mean", target: float = 1000.0
) -> tuple[np.ndarray, float]:
    """Scale masked voxel series ``(V, T)``; returns the scaled series and the grand-mean factor.

    The factor is :math:`1000/\\bar y` for ``grand_mean`` and 1 otherwise.
    """
    if method not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {method!r}")
    data = np.asarray(voxels, dtype=np.float64)
    if method == "none":
        return data, 1.0
    if method == "grand_mean":
        grand = float(data.mean())
        factor = target / grand if grand != 0 else 1.0
        return data * factor, factor
    mean = data.mean(axis=1, keepdims=True)
    if method == "psc":
        safe = np.where(np.abs(mean) > 0, mean, 1.0)
        return 100.0 * (data - mean) / safe, 1.0
    sd = data.std(axis=1, keepdims=True)
    return (data - mean) / np.where(sd > 0, sd, 1.0), 1.0


@dataclass(frozen=True)
class DenoisePreset:
    """A nuisance-regression strategy."""

    name: str
    motion: str = "24P"  # "6P", "24P" or "none"
    compcor: int = 5
    global_signal: bool = False
    band: tuple[float, float] | None = (0.01, 0.1)
    polort: int = 2
    scrub: bool = False
    extra: tuple[str, ...] = field(default=())


#: the four ABIDE Preprocessed strategies (CCS / C-PAC)
PRESETS: dict[str, DenoisePreset] = {
    "filt_global": DenoisePreset("filt_global", global_signal=True),
    "filt_noglobal": DenoisePreset("filt_noglobal"),
    "nofilt_global": DenoisePreset("nofilt_global", global_signal=True, band=None),
    "nofilt_noglobal": DenoisePreset("nofilt_noglobal", band=None),
    # not an ABIDE strategy: six motion parameters and trends only, for short runs
    "minimal": DenoisePreset("minimal", motion="6P", compcor=0, band=None),
}


def get_preset(name: str, motion: str | None = None) -> DenoisePreset:
    """A preset by name, optionally with its motion model replaced (``"24P"``/``"6P"``).

    ``minimal`` keeps its own 6P model.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown denoising preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if motion is not None and name != "minimal":
        if motion not in ("24P", "6P", "none"):
            raise ValueError(f"motion model must be '24P', '6P' or 'none', got {motion!r}")
        preset = replace(preset, motion=motion)
    return preset


def preset_confounds(table: pd.DataFrame, preset: DenoisePreset) -> np.ndarray:
    """The confound matrix ``(T, K)`` of a preset (NaN rows of derivatives set to 0)."""
    from pipeline.func.motion import MOTION_COLUMNS

    cols: list[str] = []
    if preset.motion in ("6P", "24P"):
        cols += list(MOTION_COLUMNS)
    if preset.motion == "24P":
        for c in MOTION_COLUMNS:
            cols += [f"{c}_derivative1", f"{c}_power2", f"{c}_derivative1_power2"]
    cols += [f"a_comp_cor_{j:02d}" for j in range(preset.compcor)]
    if preset.global_signal:
        cols.append("global_signal")
    if preset.scrub:
        cols += [c for c in table.columns if c.startswith("motion_outlier_")]
    cols += list(preset.extra)
    cols += [c for c in table.columns if c.startswith("non_steady_state_outlier_")]
    present = [c for c in cols if c in table.columns]
    missing = sorted(set(cols) - set(present))
    if missing:
        logger.warning("preset %s: confounds %s not available", preset.name, missing)
    conf = table[present].to_numpy(dtype=float) if present else np.zeros((len(table), 0))
    n = len(table)
    t = np.linspace(-1.0, 1.0, n)
    polys = [t**k for k in range(1, preset.polort + 1)]
    if polys:
        conf = np.column_stack([conf, *polys])
    return np.nan_to_num(conf, nan=0.0)


def bandpass(x: np.ndarray, tr: float, band: tuple[float, float]) -> np.ndarray:
    """Ideal FFT band-pass of series ``(T, N)`` along time: frequencies outside ``band`` set to 0.

    The mean (0 Hz) is removed.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    freqs = np.fft.rfftfreq(n, tr)
    keep = (freqs >= band[0]) & (freqs <= band[1]) & (freqs > 0)
    spec = np.fft.rfft(x, axis=0)
    spec[~keep] = 0.0
    return np.fft.irfft(spec, n=n, axis=0)


def denoise(
    signals: np.ndarray, confounds: pd.DataFrame, tr: float, preset: DenoisePreset | str
) -> np.ndarray:
    """Clean time series ``(T, N)`` with a preset (:func:`nilearn.signal.clean`).

    The mean of each series is kept (``signal.clean`` removes it; it is added back) so that ALFF
    and tSNR stay meaningful. Returns float64 ``(T, N)``.
    """
    from nilearn import signal

    if isinstance(preset, str):
        preset = get_preset(preset)
    x = np.asarray(signals, dtype=np.float64)
    mean = x.mean(axis=0, keepdims=True)
    x = x - mean
    conf = preset_confounds(confounds, preset)
    if conf.shape[1] >= x.shape[0] - 2:
        logger.warning(
            "preset %s: %d confounds for %d volumes leave no degrees of freedom",
            preset.name,
            conf.shape[1],
            x.shape[0],
        )
    cleaned = signal.clean(
        x,
        confounds=conf if conf.shape[1] else None,
        detrend=False,
        standardize=None,
        standardize_confounds=True,
        filter=False,
        t_r=tr,
    )
    if preset.band is not None:
        cleaned = bandpass(cleaned, tr, preset.band)
    return cleaned + mean
