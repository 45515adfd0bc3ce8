"""Find what a run left in the output folder for one subject, or for the group."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.bids_names import clean_label, parse_name
from pipeline.io import read_json
from pipeline.outputs import (
    ANAT_OUTPUTS,
    FUNC_OUTPUTS,
    ROI_OUTPUTS,
    SOURCE_ENTITIES,
    failure_path,
    find_output,
    find_outputs,
    run_label,
    status_path,
)

logger = logging.getLogger(__name__)

#: anatomical outputs the reports show (keys of :data:`pipeline.outputs.ANAT_OUTPUTS`)
ANAT_KEYS = (
    "t1w_preproc",
    "t1w_mask",
    "t1w_dseg",
    "t1w_gm_probseg",
    "t1w_wm_probseg",
    "t1w_csf_probseg",
    "std_t1w",
    "std_mask",
    "std_gm_probseg",
    "std_wm_probseg",
    "std_csf_probseg",
    "anat2std_xfm",
    "qc_tsv",
    "qc_json",
)
#: functional outputs the reports show, per run (keys of :data:`pipeline.outputs.FUNC_OUTPUTS`)
FUNC_KEYS = ("boldref", "bold_mask", "tsnr", "confounds", "carpet", "qc_json", "bold_std")


@dataclass
class SubjectOutputs:
    """Everything known about one subject's run (paths that exist, status records)."""

    subject: str
    output_dir: Path
    anat: dict[str, Path] = field(default_factory=dict)
    #: run label (``ses-1_task-rest_run-1``) → functional outputs of that run
    runs: dict[str, dict[str, Path]] = field(default_factory=dict)
    run_relmats: dict[str, list[Path]] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    inputs: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"sub-{self.subject}"

    @property
    def func(self) -> dict[str, Path]:
        """Functional outputs of the first run (empty when none)."""
        return next(iter(self.runs.values()), {})

    @property
    def relmats(self) -> list[Path]:
        """Connectivity matrices of the first run."""
        return next(iter(self.run_relmats.values()), [])


def _run_of(path: Path) -> str:
    entities, _, _ = parse_name(path.name)
    return run_label({k: v for k, v in entities.items() if k in SOURCE_ENTITIES})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        logger.warning("could not read %s: %s", path, exc)
        return None


def collect_subject(output_dir: Path, subject: str, bids_dir: Path | None = None) -> SubjectOutputs:
    """Gather the existing outputs, status records and (with ``bids_dir``) raw inputs of a subject."""
    sub = clean_label(subject)
    out = SubjectOutputs(subject=sub, output_dir=Path(output_dir))
    for key in ANAT_KEYS:
        hit = find_output(ANAT_OUTPUTS[key], out.output_dir, sub)
        if hit is not None:
            out.anat[key] = hit
    for key in FUNC_KEYS:
        for hit in find_outputs(FUNC_OUTPUTS[key], out.output_dir, sub):
            out.runs.setdefault(_run_of(hit), {})[key] = hit
    for hit in find_outputs(ROI_OUTPUTS["relmat"], out.output_dir, sub):
        out.run_relmats.setdefault(_run_of(hit), []).append(hit)
    for label in out.run_relmats:
        out.runs.setdefault(label, {})
    out.runs = dict(sorted(out.runs.items()))
    if status_path(out.output_dir, sub).exists():
        out.status = _read_json(status_path(out.output_dir, sub))
    if failure_path(out.output_dir, sub).exists():
        out.failure = _read_json(failure_path(out.output_dir, sub))
    if bids_dir is not None and (Path(bids_dir) / f"sub-{sub}").is_dir():
        out.inputs = sorted(Path(bids_dir, f"sub-{sub}").rglob("*.nii*"))
    return out


def sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of a NIfTI/TSV derivative (``{}`` when there is none)."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".tsv", ".h5"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    js = path.with_name(name + ".json")
    return (_read_json(js) or {}) if js.exists() and js != path else {}


def read_table(path: Path) -> pd.DataFrame | None:
    """A TSV (or CSV by extension) as a DataFrame; ``None`` (logged) when unreadable."""
    try:
        return pd.read_csv(
            path,
            sep="," if path.suffix == ".csv" else "\t",
            dtype={c: str for c in ("participant", "participant_id", "subject", "sub")},
        )
    except (OSError, ValueError) as exc:
        logger.warning("could not read %s: %s", path, exc)
        return None


def subjects_in(output_dir: Path) -> list[str]:
    """Subject labels with a folder, a status record or a failure record in ``output_dir``."""
    output_dir = Path(output_dir)
    labels = {p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir()}
    for p in (output_dir / "logs").glob("sub-*_*.json"):
        labels.add(p.name[4:].split("_")[0])
    return sorted(labels)
