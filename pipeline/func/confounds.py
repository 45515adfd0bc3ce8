r"""Nuisance regressors with fMRIPrep 25's column names and meaning.

* motion: ``trans_x … rot_z`` (mm, rad), about the centre of the BOLD grid (:mod:`pipeline.func.motion`);
* ``framewise_displacement`` (Power et al. 2012, as Nipype's ``FramewiseDisplacement``):
  :math:`FD_t = \sum_{k\in\{x,y,z\}} |\Delta t_k| + r\sum_k |\Delta\theta_k|`, :math:`r` = 50 mm;
* ``rmsd``: root-mean-square deviation between consecutive volumes (Jenkinson 1999, as FSL's
  ``mcflirt``/``rmsdiff`` and fMRIPrep report it): with :math:`M = M_t M_{t-1}^{-1} - I`
  (:math:`A` its 3×3 block, :math:`b` its translation) and a sphere of radius :math:`R` = 80 mm
  about :math:`c`, :math:`\mathrm{RMS} = \sqrt{\tfrac{R^2}{5}\operatorname{tr}(A^\top A) +
  (b + Ac)^\top (b + Ac)}` — the RMS displacement of the points of that sphere;
* ``dvars`` :math:`= \sqrt{\langle (\Delta y_t)^2\rangle_{\text{mask}}}` on data scaled to a median
  of 1000, and ``std_dvars`` = dvars divided by its expectation under an AR(1) null
  (Nichols 2013, as Nipype's ``ComputeDVARS`` with ``remove_zerovariance=True``, fMRIPrep's call):
  :math:`\langle \sqrt{2(1-\hat\rho_v)}\,\hat\sigma_v\rangle_v`, :math:`\hat\sigma_v` robust
  (IQR/1.349, "lower" percentiles as FSL), :math:`\hat\rho_v` the Yule–Walker lag-1 coefficient;
* ``global_signal``, ``csf``, ``white_matter``, ``csf_wm``, ``tcompcor``: mean signal in the brain,
  CSF, WM, CSF+WM and tCompCor masks;
* ``_derivative1`` (backward difference, first row n/a), ``_power2`` and ``_derivative1_power2`` of
  the six motion parameters, ``csf``, ``white_matter`` and ``global_signal``;
* CompCor (Behzadi et al. 2007) as fMRIPrep calls Nipype's ``ACompCor``/``TCompCor``: the steady
  volumes of each mask's voxel series are high-passed (discrete cosine basis and mean removed),
  each voxel scaled to unit variance, decomposed by SVD, and the leading components explaining
  50% of the variance are kept. ``c_comp_cor_XX`` (CSF mask), ``w_comp_cor_XX`` (WM),
  ``a_comp_cor_XX`` (CSF+WM, "combined"), ``t_comp_cor_XX`` (the 2% of brain voxels of highest
  temporal standard deviation after removing a quadratic trend). Non-steady volumes get 0. The JSON
  describes each retained component: ``Method``, ``Mask`` (aCompCor only), ``SingularValue``,
  ``VarianceExplained``, ``CumulativeVarianceExplained``, ``Retained``;
* ``cosine_XX``: discrete cosine basis up to the high-pass cut-off (default 1/128 Hz);
* ``non_steady_state_outlier_XX`` and ``motion_outlier_XX``: one-hot spike regressors
  (FD > ``fd_threshold`` mm or std_dvars > ``dvars_threshold``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.func.motion import MOTION_COLUMNS, params_to_matrix

logger = logging.getLogger(__name__)

#: columns that get fMRIPrep's ``_derivative1``, ``_power2`` and ``_derivative1_power2`` expansions
EXPANDED_COLUMNS = (*MOTION_COLUMNS, "csf", "white_matter", "global_signal")

#: CompCor kinds: column prefix -> (JSON ``Method``, JSON ``Mask`` or None), in fMRIPrep's order
COMPCOR_KINDS = {
    "t_comp_cor": ("tCompCor", None),
    "c_comp_cor": ("aCompCor", "CSF"),
    "w_comp_cor": ("aCompCor", "WM"),
    "a_comp_cor": ("aCompCor", "combined"),
}


def expansion(frame: pd.DataFrame) -> pd.DataFrame:
    """Each column with its ``_derivative1`` (row 0 NaN), ``_power2`` and ``_derivative1_power2``."""
    base = frame.astype(float)
    deriv = base.diff()
    out = {}
    for col in frame.columns:
        out[col] = base[col]
        out[f"{col}_derivative1"] = deriv[col]
        out[f"{col}_power2"] = base[col] ** 2
        out[f"{col}_derivative1_power2"] = deriv[col] ** 2
    return pd.DataFrame(out)


def motion_expansion(params: pd.DataFrame) -> pd.DataFrame:
    """The 24 motion columns: parameters, derivatives, squares, squared derivatives (row 0 NaN)."""
    return expansion(params[list(MOTION_COLUMNS)])


def framewise_displacement(params: pd.DataFrame, radius_mm: float = 50.0) -> np.ndarray:
    """Power's FD per volume (mm); the first volume is NaN."""
    p = params[list(MOTION_COLUMNS)].to_numpy(dtype=float)
    d = np.abs(np.diff(p, axis=0))
    fd = d[:, :3].sum(axis=1) + radius_mm * d[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def rmsd(
    params: pd.DataFrame, center_mm: Sequence[float] = (0.0, 0.0, 0.0), radius_mm: float = 80.0
) -> np.ndarray:
    """Jenkinson's RMS deviation (mm) between consecutive volumes; the first volume is NaN.

    ``center_mm`` is the sphere's centre in the coordinates the rigid parameters rotate about
    (:mod:`pipeline.func.motion`: relative to the centre of the BOLD grid).
    """
    p = params[list(MOTION_COLUMNS)].to_numpy(dtype=float)
    mats = np.stack([params_to_matrix(row) for row in p]) if len(p) else np.zeros((0, 4, 4))
    c = np.asarray(center_mm, dtype=float)
    out = np.full(len(p), np.nan)
    for t in range(1, len(p)):
        diff = mats[t] @ np.linalg.inv(mats[t - 1]) - np.eye(4)
        a = diff[:3, :3]
        b = diff[:3, 3] + a @ c
        out[t] = np.sqrt(radius_mm**2 / 5.0 * np.trace(a.T @ a) + b @ b)
    return out


def _ar1(series: np.ndarray) -> np.ndarray:
    """Yule–Walker lag-1 coefficient of each row (demeaned, biased autocovariances)."""
    x = series - series.mean(axis=1, keepdims=True)
    num = np.sum(x[:, 1:] * x[:, :-1], axis=1)
    den = np.sum(x * x, axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def compute_dvars(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS of masked voxel series ``(V, T)`` (first volume NaN)."""
    data = np.asarray(voxels, dtype=np.float64)
    median = float(np.median(data)) if data.size else 0.0
    if median != 0:
        data = data * (1000.0 / median)
    q75 = np.percentile(data, 75, axis=1, method="lower")
    q25 = np.percentile(data, 25, axis=1, method="lower")
    sd = (q75 - q25) / 1.349
    keep = sd > 0  # zero-variance voxels (e.g. outside the field of view) carry no information
    data, sd = data[keep], sd[keep]
    nan = np.full(max(np.shape(voxels)[1] - 1, 0), np.nan)
    if not keep.any():
        return np.concatenate([[np.nan], nan]), np.concatenate([[np.nan], nan])
    diff = np.diff(data, axis=1)
    dvars = np.sqrt(np.mean(diff**2, axis=0))
    ar1 = np.clip(_ar1(data), -1.0, 1.0)
    expected = float(np.mean(np.sqrt(2.0 * (1.0 - ar1)) * sd))
    std = dvars / expected if expected > 0 else nan
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


@dataclass(frozen=True)
class CompCorResult:
    """Components of one CompCor mask.

    Attributes
    ----------
    components : ndarray of shape (T, k)
        The retained left singular vectors (unit norm), one column per component.
    singular_values, variance_explained, cumulative_variance : ndarray of shape (n,)
        Of every component of the decomposition (``n = min(T, V)``), retained or not.
    """

    components: np.ndarray
    singular_values: np.ndarray
    variance_explained: np.ndarray
    cumulative_variance: np.ndarray

    @property
    def n_retained(self) -> int:
        """Number of retained components."""
        return int(self.components.shape[1])


def compcor(
    voxels: np.ndarray,
    tr: float | None = None,
    *,
    criterion: float | int | str = 0.5,
    period_cut: float = 128.0,
) -> CompCorResult:
    """CompCor components of voxel series ``(V, T)`` (Nipype's ``compute_noise_components``).

    Parameters
    ----------
    voxels : ndarray of shape (V, T)
    tr : float or None
        Repetition time (s): with it the series are projected off the cosine basis below
        ``1/period_cut`` Hz and the mean; without it only the mean is removed.
    criterion : float in (0, 1), int ≥ 1 or ``"all"``, default=0.5
        Fraction of variance the retained components explain (the fewest that reach it), or their
        number, or all of them.
    period_cut : float, default=128
        High-pass cut-off period (s).
    """
    y = np.asarray(voxels, dtype=np.float64).T  # (T, V)
    n_t = y.shape[0]
    y = np.where(np.isfinite(y).all(axis=0), y, 0.0)
    basis = np.ones((n_t, 1))
    if tr is not None:
        basis = np.column_stack([cosine_basis(n_t, tr, period_cut), basis])
    q, _ = np.linalg.qr(basis)
    y = y - q @ (q.T @ y)
    sd = y.std(axis=0)
    sd[~(sd > 0)] = 1.0
    y = y / sd
    empty = np.zeros(0)
    if y.shape[1] == 0 or n_t == 0:
        return CompCorResult(np.zeros((n_t, 0)), empty, empty, empty)
    u, s, _ = np.linalg.svd(y, full_matrices=False)
    total = float(np.sum(s**2))
    var = s**2 / total if total > 0 else np.zeros_like(s)
    cum = np.cumsum(var)
    if criterion == "all":
        k = len(s)
    elif isinstance(criterion, float) and 0 < criterion < 1:
        k = int(np.searchsorted(cum, criterion)) + 1
    elif isinstance(criterion, int) and criterion >= 1:
        k = criterion
    else:
        raise ValueError(
            f"CompCor criterion must be a fraction, a count or 'all', got {criterion!r}"
        )
    k = min(k, len(s)) if total > 0 else 0
    return CompCorResult(u[:, :k], s, var, cum)


def tcompcor_mask(voxels: np.ndarray, fraction: float = 0.02) -> np.ndarray:
    """The voxels of ``(V, T)`` series whose temporal standard deviation, after removing a
    quadratic (Legendre) trend, is in the top ``fraction`` (Nipype's ``TCompCor``)."""
    y = np.asarray(voxels, dtype=np.float64)
    n_t = y.shape[1]
    x = np.linspace(-1.0, 1.0, n_t)
    design = np.column_stack([np.ones(n_t), x, 1.5 * x**2 - 0.5])
    resid = y - (y @ np.linalg.pinv(design).T) @ design.T
    tstd = resid.std(axis=1)
    tstd[~np.isfinite(tstd)] = 0.0
    if tstd.size == 0:
        return np.zeros(0, bool)
    threshold = np.percentile(tstd, int(np.round(100.0 * (1.0 - fraction))))
    return tstd >= threshold


def spike_regressors(flags: np.ndarray, prefix: str) -> pd.DataFrame:
    """One column per flagged volume (1 there, 0 elsewhere), named ``{prefix}_00``, ``_01`` …"""
    idx = np.flatnonzero(flags)
    cols = {}
    for j, t in enumerate(idx):
        col = np.zeros(len(flags))
        col[t] = 1.0
        cols[f"{prefix}_{j:02d}"] = col
    return pd.DataFrame(cols, index=range(len(flags)))


def _mean_signal(voxels: np.ndarray, sel: np.ndarray) -> np.ndarray | float:
    return voxels[sel].mean(axis=0) if sel.any() else np.nan


def compute_confounds(
    voxels: np.ndarray,
    params: pd.DataFrame,
    tr: float,
    *,
    wm: np.ndarray,
    csf: np.ndarray,
    n_nonsteady: int = 0,
    compcor_criterion: float | int | str = 0.5,
    tcompcor_fraction: float = 0.02,
    fd_threshold: float = 0.5,
    dvars_threshold: float = 1.5,
    highpass_period: float = 128.0,
    fd_radius_mm: float = 50.0,
    rmsd_center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    motion_centre_mm: Sequence[float] | None = None,
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
    compcor_criterion : float, int or "all", default=0.5
        Components kept per CompCor mask (:func:`compcor`): fMRIPrep keeps 50% of the variance.
    tcompcor_fraction : float, default=0.02
        Fraction of the brain voxels in the tCompCor mask.
    fd_threshold, dvars_threshold, highpass_period, fd_radius_mm, rmsd_center_mm
        See the module docstring. ``rmsd_center_mm`` is relative to the parameters' rotation
        centre.
    motion_centre_mm : sequence of float, optional
        The rotation centre of ``params`` in scanner coordinates (mm), recorded in the JSON.

    Returns
    -------
    table : DataFrame
        One row per volume, fMRIPrep column names.
    metadata : dict
        Column descriptions, CompCor components, thresholds (for the JSON sidecar).
    """
    voxels = np.asarray(voxels, dtype=np.float64)
    n_t = voxels.shape[1]
    if len(params) != n_t:
        raise ValueError(f"{len(params)} motion rows for {n_t} volumes")
    if not 0 <= n_nonsteady < n_t:
        raise ValueError(f"{n_nonsteady} non-steady-state volumes in a run of {n_t}")
    wm, csf = np.asarray(wm, bool), np.asarray(csf, bool)
    steady = slice(n_nonsteady, n_t)
    tmask = tcompcor_mask(voxels[:, steady], tcompcor_fraction)
    signals = pd.DataFrame(
        {
            "global_signal": voxels.mean(axis=0),
            "csf": _mean_signal(voxels, csf),
            "white_matter": _mean_signal(voxels, wm),
        },
        index=range(n_t),
    )
    motion = params[list(MOTION_COLUMNS)].reset_index(drop=True)
    table = expansion(signals)
    table["csf_wm"] = _mean_signal(voxels, csf | wm)
    table["tcompcor"] = _mean_signal(voxels, tmask)
    dvars, std_dvars = compute_dvars(voxels)
    table["std_dvars"] = std_dvars
    table["dvars"] = dvars
    fd = framewise_displacement(params, fd_radius_mm)
    table["framewise_displacement"] = fd
    table["rmsd"] = rmsd(params, rmsd_center_mm)

    metadata: dict = {}
    masks = {"t_comp_cor": tmask, "c_comp_cor": csf, "w_comp_cor": wm, "a_comp_cor": csf | wm}
    comp_cols = {}
    for prefix, sel in masks.items():
        method, mask_name = COMPCOR_KINDS[prefix]
        if sel.sum() < 2:
            logger.warning("%s: %d voxels in its mask, no components", prefix, int(sel.sum()))
            continue
        res = compcor(
            voxels[sel][:, steady], tr, criterion=compcor_criterion, period_cut=highpass_period
        )
        for j in range(res.n_retained):
            name = f"{prefix}_{j:02d}"
            col = np.zeros(n_t)
            col[steady] = res.components[:, j]
            comp_cols[name] = col
            entry = {"Method": method}
            if mask_name is not None:
                entry["Mask"] = mask_name
            entry.update(
                {
                    "SingularValue": float(res.singular_values[j]),
                    "VarianceExplained": float(res.variance_explained[j]),
                    "CumulativeVarianceExplained": float(res.cumulative_variance[j]),
                    "Retained": True,
                }
            )
            metadata[name] = entry
    cosines = cosine_basis(n_t, tr, highpass_period)
    cosine_cols = {f"cosine_{j:02d}": cosines[:, j] for j in range(cosines.shape[1])}
    nonsteady = np.zeros(n_t, bool)
    nonsteady[:n_nonsteady] = True
    outliers = (np.nan_to_num(fd) > fd_threshold) | (np.nan_to_num(std_dvars) > dvars_threshold)
    outliers &= ~nonsteady
    table = pd.concat(
        [
            table,
            pd.DataFrame(comp_cols, index=range(n_t)),
            pd.DataFrame(cosine_cols, index=range(n_t)),
            spike_regressors(nonsteady, "non_steady_state_outlier"),
            expansion(motion),
            spike_regressors(outliers, "motion_outlier"),
        ],
        axis=1,
    )
    metadata.update(motion_metadata(motion_centre_mm))
    metadata.update(
        {
            "framewise_displacement": {
                "Description": "Power et al. (2012) framewise displacement",
                "Units": "mm",
                "Radius": fd_radius_mm,
            },
            "rmsd": {
                "Description": "Jenkinson (1999) root-mean-square deviation between consecutive "
                "volumes (sphere of radius 80 mm)",
                "Units": "mm",
            },
            "dvars": {"Description": "DVARS of the data scaled to a median of 1000"},
            "std_dvars": {"Description": "DVARS standardised by its AR(1) expectation"},
            "global_signal": {"Description": "Mean signal in the BOLD brain mask"},
            "csf": {"Description": "Mean signal in the CSF mask"},
            "white_matter": {"Description": "Mean signal in the white-matter mask"},
            "csf_wm": {"Description": "Mean signal in the combined CSF and white-matter mask"},
            "tcompcor": {"Description": "Mean signal in the tCompCor mask"},
            "MotionOutlierThresholds": {
                "framewise_displacement": fd_threshold,
                "std_dvars": dvars_threshold,
            },
            "NumberOfMotionOutliers": int(outliers.sum()),
            "NonSteadyStateVolumes": int(n_nonsteady),
            "CosineCutoffPeriod": highpass_period,
        }
    )
    return table, metadata


def motion_metadata(centre_mm: Sequence[float] | None = None) -> dict:
    """JSON entries that state the motion parameters' convention (:mod:`pipeline.func.motion`)."""
    convention = (
        "Rigid map M_t from the BOLD reference to volume t (ITK fixed->moving, the transform in "
        "desc-hmc_xfm.txt): p -> R (p - c) + c + t, RAS mm, with c the centre of the BOLD voxel "
        "grid (as MCFLIRT's parameters in fMRIPrep) and R = Rz Ry Rx (extrinsic xyz Euler angles)"
    )
    out: dict = {}
    for col in MOTION_COLUMNS:
        axis = col[-1]
        if col.startswith("trans"):
            out[col] = {"Description": f"Translation along {axis} (RAS)", "Units": "mm"}
        else:
            out[col] = {"Description": f"Rotation about the {axis} axis (RAS)", "Units": "rad"}
    out["MotionParameters"] = {"Convention": convention}
    if centre_mm is not None:
        out["MotionParameters"]["RotationCentre"] = [round(float(v), 4) for v in centre_mm]
    return out


def write_confounds_tsv(table: pd.DataFrame) -> str:
    """TSV text with ``n/a`` for missing values (BIDS)."""
    from pipeline.func.qc import format_tsv

    return format_tsv(table, digits=8)
