"""The group level: gather the participant results and run the group stages that exist.

Subjects whose participant stage failed or is missing are listed in
``group/participants_status.tsv`` and left out of the group stages (never silently passed on).
Harmonization (:mod:`pipeline.gauge`) runs when at least two sites have usable subjects, on what
``gauge.features`` names (see :mod:`pipeline.group_features`):

* ``gm_regional`` → ``group/harmonization/``: GM probability in ``gauge.regional_block_mm`` cubes
  (the headline QC of the group report);
* ``gm_voxelwise`` → ``group/harmonization/gm_voxelwise/``: every in-mask voxel of the GM maps, on
  the dask cluster of the ``dask:`` section, one harmonized NIfTI per subject;
* ``t1w_voxelwise`` → ``group/harmonization/t1w_voxelwise/``: the same for the template-space T1w,
  intensity-normalized first (``gauge.intensity_method``; Nyúl fitted on the training subjects);
* ``fc`` → ``group/harmonization/fc/``: Fisher-z FC edges of ``gauge.fc_atlas``/``gauge.fc_strategy``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.bids import read_participants
from pipeline.config import Config
from pipeline.io import read_json, remove_stale_parts, write_json, write_text
from pipeline.outputs import failure_path, status_path

logger = logging.getLogger(__name__)


def participant_status(output_dir: Path, subjects: list[str]) -> pd.DataFrame:
    """One row per subject: ``status`` (ok / failed / missing), failing stage and error."""
    rows = []
    for sub in subjects:
        ok, bad = status_path(output_dir, sub), failure_path(output_dir, sub)
        if ok.exists():
            rows.append({"participant": sub, "status": "ok", "stage": "", "error": ""})
        elif bad.exists():
            record = read_json(bad)
            rows.append(
                {
                    "participant": sub,
                    "status": "failed",
                    "stage": record.get("stage", ""),
                    "error": record.get("error", ""),
                }
            )
        else:
            rows.append({"participant": sub, "status": "missing", "stage": "", "error": ""})
    return pd.DataFrame(rows).set_index("participant")


def run_group(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    subjects: list[str],
    config: Config,
) -> int:
    """Run the group level; return 1 when subjects had to be left out, else 0."""
    output_dir = Path(output_dir)
    group_dir = output_dir / "group"
    remove_stale_parts(group_dir)  # left by a killed group job
    remove_stale_parts(output_dir, prefix="group", recursive=False)
    status = participant_status(output_dir, subjects)
    write_text(group_dir / "participants_status.tsv", status.to_csv(sep="\t"))
    usable = status.index[status.status == "ok"].tolist()
    summary: dict = {
        "n_subjects": len(subjects),
        "n_usable": len(usable),
        "left_out": status.index[status.status != "ok"].tolist(),
        "stages": {},
    }
    participants = read_participants(bids_dir, config.gauge.site_column).reindex(usable)
    if config.gauge.enabled and config.anat.enabled:
        summary["stages"]["harmonization"] = _harmonize(output_dir, usable, participants, config)
        if config.gauge.difference_column:
            summary["stages"]["gm_difference"] = _gm_difference(
                Path(bids_dir), output_dir, usable, participants, config
            )
    audits = _summarize_audits(output_dir)
    if audits:
        summary["stages"]["audit"] = audits
    write_json(group_dir / "group_summary.json", summary)
    _group_report(output_dir)
    if summary["left_out"]:
        logger.warning("left out of the group stages: %s", ", ".join(summary["left_out"]))
    return 1 if summary["left_out"] else 0


def _dask_options(config: Config):
    """The ``dask:`` options, with the local workers' memory limits taken from ``--mem`` when it
    was given: the run's limit shared by the local workers (the group process keeps a quarter)."""
    options = config.dask
    if config.mem_gb is None or options.scheduler != "local":
        return options
    import os

    n_workers = options.n_workers or max(1, min(4, os.cpu_count() or 1))
    per_worker_mb = int(config.mem_gb * 1000 * 0.75 / n_workers)
    return options.model_copy(update={"memory_limit": f"{max(per_worker_mb, 256)}MB"})


def _gm_difference(
    bids_dir: Path, output_dir: Path, subjects: list[str], participants: pd.DataFrame, config
) -> dict:
    """Voxel-wise GM difference map of ``gauge.difference_column`` before and after voxel-wise
    ComBat, with the recovery of the planted effect when the dataset records one (the demo)."""
    from pipeline.group_effects import group_difference, recovery
    from pipeline.group_features import gm_maps, maps_template
    from pipeline.io import save_image

    column = config.gauge.difference_column
    if column not in participants:
        return {"status": "skipped", "reason": f"participants.tsv has no {column!r} column"}
    res = config.anat.resolution
    harmonized_dir = output_dir / "group" / "harmonization" / "gm_voxelwise"
    sets = {"raw": gm_maps(output_dir, subjects, res)}
    mask = maps_template(sets["raw"], res).mask
    harmonized = {
        s: p
        for s in subjects
        if (
            p := next(
                iter(sorted(harmonized_dir.glob(f"sub-{s}_*desc-harmonized_probseg.nii.gz"))), None
            )
        )
    }
    if harmonized:
        sets["harmonized"] = harmonized
    truth_file = bids_dir / "sourcedata" / "groundtruth" / "diagnosis_effect.json"
    truth = read_json(truth_file) if truth_file.is_file() and column == "diagnosis" else None
    out_dir = output_dir / "group" / "gm_difference"
    result: dict = {"status": "ok", "column": column, "fwhm_mm": config.gauge.difference_fwhm_mm}
    for name, maps in sets.items():
        try:
            diff = group_difference(
                maps, participants[column], mask, config.gauge.difference_fwhm_mm
            )
        except ValueError as exc:
            result[name] = {"status": "skipped", "reason": str(exc)}
            continue
        path = save_image(diff.tmap, out_dir / f"desc-{name}_tmap.nii.gz")
        entry = {
            "status": "ok",
            "contrast": f"{diff.levels[1]} - {diff.levels[0]}",
            "n": dict(zip(diff.levels, diff.counts, strict=True)),
            "peak_mm": diff.peak_mm,
            "peak_t": diff.peak_t,
            "tmap": str(path.relative_to(output_dir)),
            "left_out": diff.left_out or {},
        }
        if truth:
            entry["recovery"] = recovery(diff, mask, truth["centre_mm"], truth["sigma_mm"])
            entry["planted_centre_mm"] = list(truth["centre_mm"])
        result[name] = entry
    write_json(out_dir / "summary.json", result)
    return result


def _summarize_audits(output_dir: Path) -> dict | None:
    """Summarise the invariance audits of every audited subject (``symprep audit``), if any."""
    if not any(output_dir.glob("sub-*/audit/*_desc-invariance_residuals.tsv")):
        return None
    from pipeline.audit import summarize_audits

    table = summarize_audits(output_dir)
    return {"status": "ok", "n_rows": len(table)}


def _group_report(output_dir: Path) -> None:
    from pipeline.reports import build_group_report

    try:
        build_group_report(output_dir)
    except Exception as exc:  # noqa: BLE001 - a report problem never costs the group results
        logger.warning("group report not written (%s: %s)", type(exc).__name__, exc)


def _scalars(result: dict) -> dict:
    return {k: v for k, v in result.items() if np.isscalar(v) or isinstance(v, str)}


def _harmonize(
    output_dir: Path, subjects: list[str], participants: pd.DataFrame, config: Config
) -> dict:
    from pipeline import gauge
    from pipeline.group_features import fc_features, gm_features

    if "site" not in participants:
        from pipeline.gauge import missing_site_column

        reason = missing_site_column(participants.columns, config.gauge.site_column)
        logger.warning("harmonization skipped: %s", reason)
        return {"status": "skipped", "reason": reason}
    if participants["site"].nunique() < 2:
        return {"status": "skipped", "reason": "fewer than two sites"}
    options, hdir = config.gauge, output_dir / "group" / "harmonization"
    result: dict = {"status": "ok"}
    if "gm_regional" in options.features:
        features = gm_features(
            output_dir, subjects, config.anat.resolution, options.regional_block_mm
        )
        if features.empty:
            return {"status": "skipped", "reason": "no template-space GM maps"}
        regional = gauge.run_harmonization(
            features, participants.loc[features.index], options, hdir, seed=config.seed
        )
        result.update(_scalars(regional))
    if "fc" in options.features and config.func.enabled:
        edges = fc_features(
            output_dir, subjects, options.fc_atlas, options.fc_strategy, config.func.task
        )
        if edges.empty or participants.loc[edges.index, "site"].nunique() < 2:
            result["fc"] = {"status": "skipped", "reason": "no FC matrices from two sites"}
        else:
            fc = gauge.run_harmonization(
                edges, participants.loc[edges.index], options, hdir / "fc", seed=config.seed
            )
            result["fc"] = {"status": "ok", **_scalars(fc)}
    for kind in ("gm", "t1w"):
        if f"{kind}_voxelwise" in options.features:
            result[f"{kind}_voxelwise"] = _harmonize_voxelwise(
                kind, output_dir, subjects, participants, config
            )
    return result


def _harmonize_voxelwise(
    kind: str, output_dir: Path, subjects: list[str], participants: pd.DataFrame, config: Config
) -> dict:
    """Voxel-wise ComBat of the template-space GM maps (``kind="gm"``) or T1w (``"t1w"``)."""
    from pipeline.dask_cluster import dask_client
    from pipeline.gauge import run_voxelwise_harmonization, t1w_normalizer
    from pipeline.group_features import gm_maps, maps_space, maps_template, t1w_maps

    res = config.anat.resolution
    maps = (gm_maps if kind == "gm" else t1w_maps)(output_dir, subjects, res)
    mask = maps_template(maps, res).mask
    if not maps or participants.loc[list(maps), "site"].nunique() < 2:
        return {
            "status": "skipped",
            "reason": f"no template-space {kind.upper()} maps from two sites",
        }
    parts = participants.loc[list(maps)]
    normalize, entities, suffix = None, f"space-{maps_space(maps)}_res-{res}", "T1w"
    if kind == "gm":
        entities, suffix = f"{entities}_label-GM", "probseg"
    else:
        mask_data = np.asarray(mask.get_fdata()) > 0.5
        normalize = t1w_normalizer(maps, parts, config.gauge, mask_data)
    work = Path(config.work_dir) if config.work_dir else output_dir.parent / "work"
    with dask_client(_dask_options(config)) as client:
        result = run_voxelwise_harmonization(
            maps,
            mask,
            parts,
            config.gauge,
            output_dir / "group" / "harmonization" / f"{kind}_voxelwise",
            work / "group" / f"{kind}_voxelwise",
            seed=config.seed,
            client=client,
            entities=entities,
            suffix=suffix,
            normalize=normalize,
        )
    return {"status": "ok", **_scalars(result)}
