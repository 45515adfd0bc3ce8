"""The group level: gather the participant results and run the group stages that exist.

Subjects whose participant stage failed or is missing are listed in
``group/participants_status.tsv`` and left out of the group stages (never silently passed on).
Harmonization (:mod:`pipeline.gauge`) runs on regional grey matter (template-space GM probability
in 8 mm cubes) when at least two sites have usable subjects.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.bids import read_participants
from pipeline.bids_names import derivative_path
from pipeline.config import Config
from pipeline.io import read_json, write_json, write_text
from pipeline.workflows.participant import failure_path, status_path

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


def gm_features(
    output_dir: Path, subjects: list[str], resolution: int, block_mm: float = 8.0
) -> pd.DataFrame:
    """Regional grey matter: template-space GM probability averaged in ``block_mm`` cubes.

    One row per subject with GM maps, one column per cube that lies at least half inside the
    template brain mask (a few thousand regional features: voxel-wise matrices belong to the
    streaming :class:`pipeline.gauge.ComBat` API, not to TSV tables).
    """
    import nibabel as nib

    from pipeline.data.templates import load_template

    factor = max(1, int(round(block_mm / resolution)))
    mask = load_template(resolution).mask.get_fdata() > 0

    def blocks(volume: np.ndarray) -> np.ndarray:
        shape = [n - n % factor for n in volume.shape[:3]]
        v = volume[: shape[0], : shape[1], : shape[2]]
        v = v.reshape(
            shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor
        )
        return v.mean(axis=(1, 3, 5))

    inside = blocks(mask.astype(np.float32)) >= 0.5
    names = [f"gm_block_{i}_{j}_{k}" for i, j, k in zip(*np.nonzero(inside), strict=True)]
    rows = {}
    for sub in subjects:
        path = derivative_path(
            output_dir,
            sub,
            "anat",
            space="MNI152NLin2009aSym",
            res=resolution,
            label="GM",
            suffix="probseg",
        )
        if path.exists():
            rows[sub] = blocks(np.asarray(nib.load(path).dataobj, dtype=np.float32))[inside]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)


def run_group(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    subjects: list[str],
    config: Config,
) -> int:
    """Run the group level; return 1 when subjects had to be left out, else 0."""
    output_dir = Path(output_dir)
    group_dir = output_dir / "group"
    status = participant_status(output_dir, subjects)
    write_text(group_dir / "participants_status.tsv", status.to_csv(sep="\t"))
    usable = status.index[status.status == "ok"].tolist()
    summary: dict = {
        "n_subjects": len(subjects),
        "n_usable": len(usable),
        "left_out": status.index[status.status != "ok"].tolist(),
        "stages": {},
    }
    participants = read_participants(bids_dir).reindex(usable)
    if config.gauge.enabled and config.anat.enabled:
        summary["stages"]["harmonization"] = _harmonize(output_dir, usable, participants, config)
    audits = _summarize_audits(output_dir)
    if audits:
        summary["stages"]["audit"] = audits
    write_json(group_dir / "group_summary.json", summary)
    _group_report(output_dir)
    if summary["left_out"]:
        logger.warning("left out of the group stages: %s", ", ".join(summary["left_out"]))
    return 1 if summary["left_out"] else 0


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


def _harmonize(
    output_dir: Path, subjects: list[str], participants: pd.DataFrame, config: Config
) -> dict:
    from pipeline import gauge

    if not hasattr(gauge, "run_harmonization"):
        return {"status": "skipped", "reason": "harmonization entry point not available"}
    if "site" not in participants or participants["site"].nunique() < 2:
        return {"status": "skipped", "reason": "fewer than two sites"}
    features = gm_features(output_dir, subjects, config.anat.resolution)
    if features.empty:
        return {"status": "skipped", "reason": "no template-space GM maps"}
    result = gauge.run_harmonization(
        features,
        participants.loc[features.index],
        config.gauge,
        output_dir / "group" / "harmonization",
        seed=config.seed,
    )
    return {
        "status": "ok",
        **{k: v for k, v in result.items() if np.isscalar(v) or isinstance(v, str)},
    }
