r"""Nuisance regressors with fMRIPrep's column names.

* motion: ``trans_x … rot_z`` (mm, rad) with ``_derivative1`` (backward difference, first row
  n/a), ``_power2`` and ``_derivative1_power2`` — the 24-parameter (Friston) expansion;
* ``framewise_displacement`` (Power et al. 2012):
  :math:`FD_t = \sum_{k\in\{x,y,z\}} |\Delta t_k| + r\sum_k |\Delta\theta_k|`, :math:`r` = 50 mm;
* ``dvars`` :math:`= \sqrt{\langle (\Delta y_t)^2\rangle_{\text{mask}}}` on grand-mean-1000
  scaled data, and ``std_dvars`` = dvars divided by its expectation under an AR(1) null
  (Nichols 2013, as Nipype's ``ComputeDVARS``):
  :math:`\langle \sqrt{2(1-\hat\rho_v)}\,\hat\sigma_v\rangle_v`, :math:`\hat\sigma_v` robust
  (IQR/1.349), :math:`\hat\rho_v` the lag-1 autocorrelation;
* ``global_signal``, ``csf``, ``white_matter``: mean signal in the brain, CSF and WM masks;
* ``a_comp_cor_XX``: principal components of the high-passed (cosine basis), variance-normalised
  WM+CSF voxel series (Behzadi et al. 2007);
* ``cosine_XX``: discrete cosine basis up to the high-pass cut-off (default 1/128 Hz);
* ``non_steady_state_outlier_XX`` and ``motion_outlier_XX``: one-hot spike regressors
  (FD > ``fd_threshold`` mm or std_dvars > ``dvars_threshold``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.func.motion import MOTION_COLUMNS

logger = logging.getLogger(__name__)


def motion_expansion(params: pd.DataFrame) -> pd.DataFrame:
    """The 24 motion columns: parameters, derivatives, squares, squared derivatives (row 0 NaN)."""
    base = params[list(MOTION_COLUMNS)].astype(float)
    deriv = base.diff()
    out = {}
    for col in MOTION_COLUMNS:
        out[col] = base[col]
        out[f"{col}_derivative1"] = deriv[col]
        out[f"{col}_power2"] = base[col] ** 2
        out[f"{col}_derivative1_power2"] = deriv[col] ** 2
    return pd.DataFrame(out)


def framewise_displacement(params: pd.DataFrame, radius_mm: float = 50.0) -> np.ndarray:
    """Power's FD per volume (mm); the first volume is NaN."""
    p = params[list(MOTION_COLUMNS)].to_numpy(dtype=float)
    d = np.abs(np.diff(p, axis=0))
    fd = d[:, :3].sum(axis=1) + radius_mm * d[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def _ar1(series: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row (demeaned)."""
    x = series - series.mean(axis=1, keepdims=True)
    num = np.sum(x[:, 1:] * x[:, :-1], axis=1)
    den = np.sum(x * x, axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def compute_dvars(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS of masked voxel series ``(V, T)`` (first volume NaN)."""
    data = np.asarray(voxels, dtype=np.float64)
    grand = data.mean()
    if grand != 0:
        data = data * (1000.0 / grand)
    diff = np.diff(data, axis=1)
    dvars = np.sqrt(np.mean(diff**2, axis=0))
    q75, q25 = np.percentile(data, [75, 25], axis=1)
    sd = (q75 - q25) / 1.349
    ar1 = np.clip(_ar1(data), -1.0, 1.0)
    expected = float(np.mean(np.sqrt(2.0 * (1.0 - ar1)) * sd))
    std = dvars / expected if expected > 0 else np.full_like(dvars, np.nan)
    return np.concatenate([[np.nan], dvars]), np.concatenate([[np.nan], std])


def cosine_basis(n_volumes: int, tr: float, period_cut: float = 128.0) -> np.ndarray:
    r"""Discrete cosine drift basis (no constant), columns :math:`\sqrt{2/n}\cos(\pi k (2t+1)/(2n))`.

    :math:`k = 1 … K-1`, :math:`K = \lfloor 2 n T / P\rfloor` with cut-off period :math:`P` (s), as
    fMRIPrep / Nipype's ``cosine_filter``.
    """
    order = int(np.floor(2.0 * n_volumes * tr / period_cut))
    t = np.arange(n_volumes)
    cols = [
        np.sqrt(2.0 / n_volumes) * np.cos(np.pi * k * (2 * t + 1) / (2 * n_volumes))
        for k in range(1, max(order, 1))
    ]
    return np.column_stack(cols) if cols else np.zeros((n_volumes, 0))


def acompcor(
    voxels: np.ndarray, n_components: int, highpass: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical CompCor: top principal components of nuisance-tissue voxel series ``(V, T)``.

    Series are high-passed (projected off ``highpass`` and the mean), variance-normalised, and
    decomposed by SVD. Returns components ``(T, k)`` (unit norm) and their explained variance ratios.
    """
    y = np.asarray(voxels, dtype=np.float64).T  # (T, V)
    n_t = y.shape[0]
    basis = np.ones((n_t, 1))
    if highpass is not None and highpass.size:
        basis = np.column_stack([basis, highpass])
    q, _ = np.linalg.qr(basis)
    y = y - q @ (q.T @ y)
    sd = y.std(axis=0)
    keep = sd > 1e-8 * max(float(sd.max()), 1e-30)
    y = y[:, keep] / sd[keep]
    if y.shape[1] == 0:
        return np.zeros((n_t, 0)), np.zeros(0)
    u, s, _ = np.linalg.svd(y, full_matrices=False)
    k = min(n_components, u.shape[1])
    var = s**2 / np.sum(s**2)
    return u[:, :k], var[:k]


def spike_regressors(flags: np.ndarray, prefix: str) -> pd.DataFrame:
    """One column per flagged volume (1 there, 0 elsewhere), named ``{prefix}_00``, ``_01`` …"""
    idx = np.flatnonzero(flags)
    cols = {}
    for j, t in enumerate(idx):
        col = np.zeros(len(flags))
        col[t] = 1.0
        cols[f"{prefix}_{j:02d}"] = col
    return pd.DataFrame(cols, index=range(len(flags)))


def compute_confounds(
    voxels: np.ndarray,
    params: pd.DataFrame,
    tr: float,
    *,
    wm: np.ndarray,
    csf: np.ndarray,
    n_nonsteady: int = 0,
    n_compcor: int = 5,
    fd_threshold: float = 0.5,
    dvars_threshold: float = 1.5,
    highpass_period: float = 128.0,
    fd_radius_mm: float = 50.0,
) -> tuple[pd.DataFrame, dict]:
    """The confounds table and its JSON description.

    Parameters
    ----------
    voxels : ndarray of shape (V, T)
        Brain-mask voxel series.
    params : DataFrame
        Motion parameters (:data:`pipeline.func.motion.MOTION_COLUMNS`), one row per volume.
    tr : float
        Repetition time (s).
    wm, csf : ndarray of bool, shape (V,)
        Which brain voxels are white matter / CSF.
    n_nonsteady : int, default=0
        Leading non-steady-state volumes still in the run (flagged, left out of CompCor).
    n_compcor, fd_threshold, dvars_threshold, highpass_period, fd_radius_mm
        See the module docstring.

    Returns
    -------
    table : DataFrame
        One row per volume, fMRIPrep column names.
    metadata : dict
        Column descriptions, CompCor variance, thresholds (for the JSON sidecar).
    """
    voxels = np.asarray(voxels, dtype=np.float64)
    n_t = voxels.shape[1]
    if len(params) != n_t:
        raise ValueError(f"{len(params)} motion rows for {n_t} volumes")
    wm, csf = np.asarray(wm, bool), np.asarray(csf, bool)
    table = pd.DataFrame(index=range(n_t))
    table["global_signal"] = voxels.mean(axis=0)
    table["csf"] = voxels[csf].mean(axis=0) if csf.any() else np.nan
    table["white_matter"] = voxels[wm].mean(axis=0) if wm.any() else np.nan
    dvars, std_dvars = compute_dvars(voxels)
    table["dvars"] = dvars
    table["std_dvars"] = std_dvars
    fd = framewise_displacement(params, fd_radius_mm)
    table["framewise_displacement"] = fd
    table = pd.concat([table, motion_expansion(params).reset_index(drop=True)], axis=1)
    cosines = cosine_basis(n_t, tr, highpass_period)
    steady = slice(n_nonsteady, n_t)
    comps = np.zeros((n_t, 0))
    variance = np.zeros(0)
    nuisance = wm | csf
    if n_compcor > 0 and nuisance.sum() >= n_compcor:
        cos_steady = cosine_basis(n_t - n_nonsteady, tr, highpass_period)
        c, variance = acompcor(voxels[nuisance][:, steady], n_compcor, cos_steady)
        comps = np.zeros((n_t, c.shape[1]))
        comps[steady] = c
    for j in range(comps.shape[1]):
        table[f"a_comp_cor_{j:02d}"] = comps[:, j]
    for j in range(cosines.shape[1]):
        table[f"cosine_{j:02d}"] = cosines[:, j]
    nonsteady = np.zeros(n_t, bool)
    nonsteady[:n_nonsteady] = True
    outliers = (np.nan_to_num(fd) > fd_threshold) | (np.nan_to_num(std_dvars) > dvars_threshold)
    outliers &= ~nonsteady
    table = pd.concat(
        [
            table,
            spike_regressors(nonsteady, "non_steady_state_outlier"),
            spike_regressors(outliers, "motion_outlier"),
        ],
        axis=1,
    )
    metadata = {
        "framewise_displacement": {
            "Description": "Power et al. (2012) framewise displacement",
            "Units": "mm",
            "Radius": fd_radius_mm,
        },
        "dvars": {"Description": "DVARS on grand-mean-1000 scaled data"},
        "std_dvars": {"Description": "DVARS standardised by its AR(1) expectation"},
        "global_signal": {"Description": "Mean signal in the BOLD brain mask"},
        "csf": {"Description": "Mean signal in the CSF mask"},
        "white_matter": {"Description": "Mean signal in the white-matter mask"},
        "MotionOutlierThresholds": {
            "framewise_displacement": fd_threshold,
            "std_dvars": dvars_threshold,
        },
        "NumberOfMotionOutliers": int(outliers.sum()),
        "NonSteadyStateVolumes": int(n_nonsteady),
        "CosineCutoffPeriod": highpass_period,
    }
    for j, v in enumerate(variance):
        metadata[f"a_comp_cor_{j:02d}"] = {
            "Method": "aCompCor",
            "Mask": "combined WM+CSF",
            "VarianceExplained": float(v),
            "CumulativeVarianceExplained": float(np.sum(variance[: j + 1])),
        }
    return table, metadata


def write_confounds_tsv(table: pd.DataFrame) -> str:
    """TSV text with ``n/a`` for missing values (BIDS)."""
    from pipeline.func.qc import format_tsv

    return format_tsv(table, digits=8)
