"""Group-level entry point: fit ComBat on the training subjects, apply to everyone, write QC.

Outputs under ``out_dir`` (each written atomically):

* ``desc-harmonized_features.tsv`` — harmonized features, index ``participant_id``;
* ``desc-original_features.tsv`` — the same features before harmonization;
* ``combat_model.npz`` + ``combat_model.json`` — the fitted model (see :mod:`._persist`);
* ``qc.json`` — site prediction before/after, biology kept, counts, options;
* ``site_prediction.tsv``, ``effects.tsv`` — the same numbers as tables;
* ``site_prediction.png``, ``effect_maps.png``, ``site_pc1.png`` — figures for the group report.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.gauge import _figures
from pipeline.gauge._combat import ComBat
from pipeline.gauge._errors import HarmonizationError
from pipeline.gauge._qc import biology_kept, effect_maps, site_prediction
from pipeline.gauge._registry import build_harmonizer
from pipeline.gauge.options import GaugeOptions
from pipeline.io import atomic_path, write_json

log = logging.getLogger(__name__)

#: participants columns treated as biology in the QC (when present)
BIOLOGY = ("age", "sex", "diagnosis")


def _write_tsv(frame: pd.DataFrame, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        frame.to_csv(tmp, sep="\t", float_format="%.10g")
    return dest


def missing_site_column(columns, site_column: str = "site") -> str:
    """Why harmonization cannot run without a site column, and how to give it one."""
    have = ", ".join(repr(str(c)) for c in columns) or "none"
    return (
        f"participants.tsv has no {site_column!r} column (its columns: {have}); harmonization "
        "needs each participant's site or scanner: add a 'site' column, or name the column that "
        "holds it with gauge.site_column (e.g. site_column: SITE_ID)"
    )


def _check_inputs(
    features: pd.DataFrame, participants: pd.DataFrame, options: GaugeOptions
) -> pd.DataFrame:
    if not isinstance(features, pd.DataFrame) or not isinstance(participants, pd.DataFrame):
        raise HarmonizationError("features and participants must be pandas DataFrames")
    if "site" not in participants.columns:
        raise HarmonizationError(missing_site_column(participants.columns, options.site_column))
    missing = [str(p) for p in features.index if p not in participants.index]
    if missing:
        raise HarmonizationError(
            f"{len(missing)} participant(s) of features are not in participants "
            f"(first: {missing[0]})"
        )
    if features.index.has_duplicates:
        raise HarmonizationError("features has duplicate participant_id rows")
    absent = [c for c in options.covariates if c not in participants.columns]
    if absent:
        raise ConfigError(f"gauge.covariates names column(s) {absent} not in participants")
    if "diagnosis" in options.covariates:
        if not options.allow_diagnosis_covariate:
            raise ConfigError(
                "gauge.covariates includes 'diagnosis', which leaks when class balance differs "
                "by site; set gauge.allow_diagnosis_covariate: true to allow it"
            )
        warnings.warn(
            "diagnosis is a ComBat covariate: site-prediction QC and downstream models may be "
            "optimistic when diagnosis balance differs by site",
            UserWarning,
            stacklevel=3,
        )
    return participants.loc[features.index]


def train_mask(participants: pd.DataFrame, options: GaugeOptions) -> np.ndarray:
    if options.fit_on == "all":
        return np.ones(len(participants), dtype=bool)
    if options.fit_on not in participants.columns:
        raise ConfigError(
            f"gauge.fit_on is {options.fit_on!r}: expected 'all' or a participants column"
        )
    col = participants[options.fit_on]
    if not pd.api.types.is_bool_dtype(col):
        raise ConfigError(
            f"gauge.fit_on column {options.fit_on!r} must be boolean, got {col.dtype}"
        )
    return col.to_numpy(dtype=bool)


def run_harmonization(
    features: pd.DataFrame,
    participants: pd.DataFrame,
    options: GaugeOptions,
    out_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Harmonize ``features`` across sites and write the model, tables, QC and figures.

    Parameters
    ----------
    features : DataFrame
        Index ``participant_id``, one column per feature (no NaN).
    participants : DataFrame
        Index ``participant_id``; columns ``site`` and those in ``options.covariates``
        (``age``, ``sex``, ``diagnosis`` are used by the QC when present).
    options : GaugeOptions
    out_dir : Path
    seed : int
        Seeds the QC folds, feature sampling and permutations.

    Returns
    -------
    dict
        Paths written and the headline QC numbers.
    """
    out_dir = Path(out_dir)
    parts = _check_inputs(features, participants, options)
    train = train_mask(parts, options)
    X = features.to_numpy(dtype=np.float64)
    site = parts["site"].astype(str).to_numpy(dtype=object)
    cov = parts[list(options.covariates)] if options.covariates else None
    model = build_harmonizer(options)

    def _cov(mask: np.ndarray) -> pd.DataFrame | None:
        return None if cov is None else cov[mask].reset_index(drop=True)

    model.fit(X[train], site[train], _cov(train))
    unseen = ~np.isin(site, np.asarray(model.sites_, dtype=object))
    if unseen.any():
        log.info("estimating %d unseen site(s) with the frozen model", len(set(site[unseen])))
        model.add_sites(X[unseen], site[unseen], _cov(unseen))
    harmonized = model.transform(X, site, None if cov is None else cov.reset_index(drop=True))

    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(harmonized, index=features.index, columns=features.columns)
    table.index.name = "participant_id"
    original = pd.DataFrame(X, index=features.index, columns=features.columns)
    original.index.name = "participant_id"
    paths = {
        "features": _write_tsv(table, out_dir / "desc-harmonized_features.tsv"),
        "original_features": _write_tsv(original, out_dir / "desc-original_features.tsv"),
    }
    paths["model"] = model.save(out_dir / "combat_model.npz")

    summary = write_quality_control(
        X, harmonized, parts, train, site, options, model, out_dir, seed, paths
    )
    return summary


def write_quality_control(
    X: np.ndarray,
    harmonized: np.ndarray,
    parts: pd.DataFrame,
    train: np.ndarray,
    site: np.ndarray,
    options: GaugeOptions,
    model: ComBat,
    out_dir: Path,
    seed: int,
    paths: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Harmonization QC of ``X`` → ``harmonized``: tables, figures and ``qc.json`` in ``out_dir``.

    Site prediction is measured on the training subjects with the harmonizer refitted inside
    each fold (``model``'s settings, never its fitted state); biological t-maps on everyone.
    ``paths`` (name → path of what the caller wrote) is completed and returned in the summary;
    ``extra`` entries are added to the summary and ``qc.json``.
    """
    # QC: leakage-free site prediction on the training subjects, biology on everyone
    bio = parts[[c for c in BIOLOGY if c in parts.columns]].reset_index(drop=True)
    regress = [c for c in BIOLOGY if c in parts.columns]
    regress += [c for c in options.covariates if c not in regress]
    qc_cov = parts[regress][train].reset_index(drop=True)
    qc_kw = {
        "covariates": qc_cov,
        "n_splits": options.qc_splits,
        "n_permutations": options.qc_permutations,
        "max_features": options.qc_max_features,
        "seed": seed,
    }
    t_before, t_after = effect_maps(X, bio), effect_maps(harmonized, bio)
    effects = biology_kept(t_before, t_after)
    paths["effects"] = _write_tsv(effects, out_dir / "effects.tsv")
    try:
        before = site_prediction(X[train], site[train], harmonizer=None, **qc_kw)
        after = site_prediction(
            X[train], site[train], harmonizer=model, combat_covariates=options.covariates, **qc_kw
        )
    except (ValueError, HarmonizationError) as exc:  # too few subjects per fold
        log.warning("site-prediction QC skipped: %s", str(exc).splitlines()[0])
        prediction_qc: dict[str, Any] = {"skipped": str(exc).splitlines()[0]}
        before = after = None
    else:
        prediction_qc = {"before": before, "after": after}
        prediction = pd.DataFrame(
            [
                {
                    "stage": k,
                    **{m: v[m] for m in ("balanced_accuracy", "chance", "p_value", "n_splits")},
                }
                for k, v in (("before", before), ("after", after))
            ]
        ).set_index("stage")
        paths["site_prediction"] = _write_tsv(prediction, out_dir / "site_prediction.tsv")
        paths["fig_site_prediction"] = _figures.plot_site_prediction(
            before, after, out_dir / "site_prediction.png"
        )
    paths["fig_effect_maps"] = _figures.plot_effect_maps(
        t_before, t_after, out_dir / "effect_maps.png"
    )
    paths["fig_site_pc1"] = _figures.plot_site_means(X, harmonized, site, out_dir / "site_pc1.png")
    summary = {
        "n_subjects": int(X.shape[0]),
        "n_training_subjects": int(train.sum()),
        "n_features": int(X.shape[1]),
        "sites": [str(s) for s in model.sites_],
        "added_sites": [str(s) for s in getattr(model, "added_sites_", [])],
        "site_prediction": prediction_qc,
        "effects": effects.reset_index().to_dict(orient="records"),
        "options": options.model_dump(),
        "seed": seed,
        **(extra or {}),
    }
    paths["qc"] = write_json(out_dir / "qc.json", summary)
    summary["paths"] = {k: str(v) for k, v in paths.items()}
    if before is not None and after is not None:
        log.info(
            "site balanced accuracy %.2f → %.2f (chance %.2f)",
            before["balanced_accuracy"],
            after["balanced_accuracy"],
            before["chance"],
        )
    return summary
