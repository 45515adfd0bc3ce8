"""ROI time series of many subjects, from symprep's derivatives or from ABIDE Preprocessed.

symprep's are found through their declared output (:data:`pipeline.outputs.ROI_OUTPUTS`
``timeseries``: ``sub-X/func/sub-X_task-T_space-…_atlas-A_desc-S_timeseries.tsv``) with the labels
of the BIDS ``participants.tsv``. ABIDE Preprocessed is read as ``symprep fetch-abide
--preprocessed`` (nilearn's :func:`~nilearn.datasets.fetch_abide_pcp`) leaves it on disk::

    OUT/ABIDE_pcp/Phenotypic_V1_0b_preprocessed1.csv
    OUT/ABIDE_pcp/<pipeline>/<strategy>/<FILE_ID>_rois_<atlas>.1D

with the diagnosis from ``DX_GROUP`` (1: ASD, 2: control) and the site from ``SITE_ID``.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "ABIDE_PHENOTYPIC",
    "RoiData",
    "fc_matrices",
    "find_abide_root",
    "load_abide_rois",
    "load_rois",
    "load_symprep_rois",
]

ABIDE_PHENOTYPIC = "Phenotypic_V1_0b_preprocessed1.csv"
_ABIDE_DX = {1: "ASD", 2: "TD"}


@dataclass
class RoiData:
    """ROI time series of several subjects with their labels.

    Attributes
    ----------
    subjects : list of str
    sites : numpy.ndarray of str
    target : numpy.ndarray
        Raw target values (class names or numbers).
    timeseries : list of numpy.ndarray
        One ``(T_s, N)`` array per subject, ROIs valid in every subject only.
    roi_names : list of str
    coords : numpy.ndarray or None
        ``(N, 3)`` MNI coordinates (mm) of coordinate atlases, None otherwise.
    source : str
        Where the data came from (for the metrics).
    covariates : pandas.DataFrame or None
        Columns ComBat keeps (age, sex) where available, one row per subject.
    """

    subjects: list[str]
    sites: np.ndarray
    target: np.ndarray
    timeseries: list[np.ndarray]
    roi_names: list[str]
    coords: np.ndarray | None
    source: str
    covariates: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.subjects)


def fc_matrices(timeseries: list[np.ndarray]) -> np.ndarray:
    """Fisher-z Pearson FC ``(S, N, N)`` of each subject's series (diagonal 0)."""
    from pipeline.func.connectivity import connectivity

    return np.stack([connectivity(ts, "correlation", z=True) for ts in timeseries])


def _common_rois(series: list[np.ndarray], names: list[str], what: str) -> tuple[list, list]:
    """Keep the ROIs finite and non-constant in every subject (logged)."""
    ok = np.ones(len(names), bool)
    for ts in series:
        finite = np.all(np.isfinite(ts), axis=0)
        ok &= finite & (np.where(finite, ts, 0.0).std(axis=0) > 0)
    if ok.sum() < 2:
        raise InputError(f"fewer than 2 ROIs valid in every subject of {what}")
    if not ok.all():
        logger.info("%s: %d of %d ROIs valid in every subject kept", what, ok.sum(), len(names))
    return [ts[:, ok] for ts in series], ok


def _read_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"unreadable ROI time series ({exc})", path) from None
    if table.shape[1] < 2 or not all(pd.api.types.is_numeric_dtype(t) for t in table.dtypes):
        raise InputError("ROI time series must be a numeric table with one column per ROI", path)
    return table


def _atlas_label_and_coords(atlas: str) -> tuple[str, np.ndarray | None]:
    """BIDS ``atlas-`` label of a config name (``power2011`` → ``Power2011``) and coordinates."""
    from pipeline.func.atlases import COORDINATE_ATLASES, load_coordinate_atlas

    for name, (label, _) in COORDINATE_ATLASES.items():
        if atlas in (name, label):
            return label, load_coordinate_atlas(name).coords
    return atlas, None


def load_symprep_rois(
    bids_dir: str | os.PathLike[str],
    derivatives_dir: str | os.PathLike[str],
    atlas: str = "power2011",
    denoise: str = "filt_noglobal",
    target: str = "diagnosis",
    task: str | None = "rest",
) -> RoiData:
    """ROI series of one atlas and denoising preset from a symprep output folder.

    A subject's runs (sessions, runs) are z-scored and concatenated; subjects without a series
    are left out (logged).
    """
    from pipeline.func.features import strategy_label
    from pipeline.models.data import read_participants
    from pipeline.outputs import ROI_OUTPUTS, find_outputs

    table = read_participants(bids_dir, target)
    label, coords = _atlas_label_and_coords(atlas)
    filters = {"atlas": label, "desc": strategy_label(denoise)}
    if task:
        filters["task"] = task
    subjects, series, names = [], [], None
    for sub in table.index:
        found = find_outputs(ROI_OUTPUTS["timeseries"], derivatives_dir, sub, **filters)
        if not found:
            logger.info("sub-%s: no atlas-%s desc-%s time series; left out", sub, *filters.values())
            continue
        runs = []
        for path in found:
            frame = _read_table(path)
            if names is None:
                names = list(frame.columns)
            if list(frame.columns) != names:
                raise InputError(f"ROIs differ from the first subject's ({len(names)} ROIs)", path)
            x = frame.to_numpy(np.float64)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN ROIs stay NaN
                mean, sd = np.nanmean(x, 0), np.nanstd(x, 0)
            runs.append((x - mean) / np.where(sd > 0, sd, 1.0))
        subjects.append(sub)
        series.append(np.concatenate(runs))
    if not subjects:
        raise InputError(
            f"no ROI time series of atlas-{label} desc-{filters['desc']} "
            "(run the participant stage with this atlas and denoising preset)",
            derivatives_dir,
        )
    series, ok = _common_rois(series, names, f"atlas-{label}")
    sub_table = table.loc[subjects]
    participants = pd.read_csv(Path(bids_dir) / "participants.tsv", sep="\t", dtype=str)
    participants.index = participants["participant_id"].str.removeprefix("sub-")
    covariates = _covariates(participants.loc[subjects])
    return RoiData(
        subjects=[f"sub-{s}" for s in subjects],
        sites=sub_table["site"].astype(str).to_numpy(),
        target=sub_table["target"].to_numpy(),
        timeseries=series,
        roi_names=[n for n, k in zip(names, ok, strict=True) if k],
        coords=coords[ok] if coords is not None and len(coords) == len(ok) else None,
        source=f"symprep {Path(derivatives_dir)} atlas-{label} desc-{filters['desc']}",
        covariates=covariates,
    )


def _covariates(table: pd.DataFrame) -> pd.DataFrame | None:
    """Age (numeric) and sex columns of a participants table, when present and complete."""
    cols = {}
    for name in ("age", "AGE_AT_SCAN"):
        if name in table.columns:
            values = pd.to_numeric(table[name], errors="coerce")
            if values.notna().all():
                cols["age"] = values.to_numpy(float)
            break
    for name in ("sex", "SEX"):
        if name in table.columns and table[name].notna().all() and table[name].nunique() > 1:
            cols["sex"] = table[name].astype(str).to_numpy()
            break
    return pd.DataFrame(cols) if cols else None


def find_abide_root(path: str | os.PathLike[str]) -> Path | None:
    """The ``ABIDE_pcp`` folder at or under ``path`` (holding the phenotypic CSV), or None."""
    path = Path(path)
    for root in (path, path / "ABIDE_pcp"):
        if (root / ABIDE_PHENOTYPIC).is_file():
            return root
    return None


def load_abide_rois(
    path: str | os.PathLike[str],
    atlas: str = "cc200",
    strategy: str = "nofilt_noglobal",
    pipeline: str = "cpac",
) -> RoiData:
    """ABIDE Preprocessed ROI series ``rois_<atlas>`` (``.1D``) as laid out on disk.

    Subjects of the phenotypic table without a file are left out (logged); the target is the
    diagnosis (``ASD`` / ``TD``). The default strategy is the one ``fetch-abide`` (nilearn)
    fetches by default.
    """
    root = find_abide_root(path)
    if root is None:
        raise InputError(f"no ABIDE Preprocessed phenotypic file {ABIDE_PHENOTYPIC}", path)
    csv = root / ABIDE_PHENOTYPIC
    try:
        pheno = pd.read_csv(csv, dtype={"FILE_ID": str, "SITE_ID": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"unreadable phenotypic table ({exc})", csv) from None
    for col in ("FILE_ID", "SITE_ID", "DX_GROUP"):
        if col not in pheno.columns:
            raise InputError(f"column {col!r} missing", csv)
    atlas = atlas.removeprefix("rois_")
    folder = root / pipeline / strategy
    rows, series, names = [], [], None
    for i, row in pheno.iterrows():
        if row["FILE_ID"] == "no_filename":
            continue
        file = folder / f"{row['FILE_ID']}_rois_{atlas}.1D"
        if not file.is_file():
            continue
        try:
            x = np.loadtxt(file, ndmin=2)
        except ValueError as exc:
            raise InputError(f"unreadable ABIDE ROI series ({exc})", file) from None
        header = file.open().readline()
        cols = header.lstrip("#").split() if header.startswith("#") else []
        cols = cols if len(cols) == x.shape[1] else [f"roi{j + 1:03d}" for j in range(x.shape[1])]
        if names is None:
            names = cols
        if x.shape[1] != len(names):
            raise InputError(f"{x.shape[1]} ROIs, the first subject had {len(names)}", file)
        rows.append(i)
        series.append(x)
    if not rows:
        raise InputError(f"no rois_{atlas} files (.1D) for {pipeline}/{strategy}", folder)
    logger.info("ABIDE Preprocessed rois_%s: %d subjects", atlas, len(rows))
    series, ok = _common_rois(series, names, f"rois_{atlas}")
    table = pheno.loc[rows]
    dx = pd.to_numeric(table["DX_GROUP"], errors="coerce").map(_ABIDE_DX)
    if dx.isna().any():
        raise InputError("DX_GROUP must be 1 (ASD) or 2 (control)", csv)
    return RoiData(
        subjects=[f"sub-{s}" for s in table["FILE_ID"]],
        sites=table["SITE_ID"].astype(str).to_numpy(),
        target=dx.to_numpy(),
        timeseries=series,
        roi_names=[n for n, k in zip(names, ok, strict=True) if k],
        coords=None,
        source=f"ABIDE Preprocessed {pipeline}/{strategy} rois_{atlas}",
        covariates=_covariates(table),
    )


def load_rois(
    bids_dir: str | os.PathLike[str],
    derivatives_dir: str | os.PathLike[str],
    source: str = "auto",
    atlas: str | None = None,
    denoise: str | None = None,
    target: str = "diagnosis",
    abide_pipeline: str = "cpac",
) -> RoiData:
    """:func:`load_abide_rois` or :func:`load_symprep_rois`; ``auto`` picks ABIDE when
    ``derivatives_dir`` holds ABIDE Preprocessed's phenotypic file. ``denoise`` defaults to
    ``nofilt_noglobal`` for ABIDE (what ``fetch-abide`` fetches), ``filt_noglobal`` for symprep."""
    if source == "auto":
        source = "abide" if find_abide_root(derivatives_dir) is not None else "symprep"
    if source == "abide":
        strategy = denoise or "nofilt_noglobal"
        return load_abide_rois(derivatives_dir, atlas or "cc200", strategy, abide_pipeline)
    denoise = denoise or "filt_noglobal"
    return load_symprep_rois(bids_dir, derivatives_dir, atlas or "power2011", denoise, target)
