"""Find what a run left in the output folder for one subject, or for the group."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.bids_names import clean_label
from pipeline.io import read_json

logger = logging.getLogger(__name__)

#: anatomical outputs: key → file-name ending (``sub-X_`` prefix omitted, any ``res``)
ANAT_PATTERNS = {
    "t1w_preproc": "desc-preproc_T1w.nii.gz",
    "t1w_mask": "desc-brain_mask.nii.gz",
    "std_t1w": "space-*_desc-preproc_T1w.nii.gz",
    "std_mask": "space-*_desc-brain_mask.nii.gz",
    "std_gm_probseg": "space-*_label-GM_probseg.nii.gz",
    "std_wm_probseg": "space-*_label-WM_probseg.nii.gz",
    "std_csf_probseg": "space-*_label-CSF_probseg.nii.gz",
    "anat2std_xfm": "from-T1w_to-*_mode-image_xfm.h5",
    "qc_tsv": "desc-registration_qc.tsv",
    "qc_json": "desc-registration_qc.json",
}
#: functional outputs (first run found): key → glob after ``sub-X_``
FUNC_PATTERNS = {
    "boldref": "*space-*_boldref.nii.gz",
    "bold_mask": "*space-*_desc-brain_mask.nii.gz",
    "tsnr": "*_desc-tsnr_boldmap.nii.gz",
    "confounds": "*_desc-confounds_timeseries.tsv",
    "carpet": "*_desc-carpet_timeseries.tsv",
    "qc_json": "*_desc-func_qc.json",
    "bold_std": "*space-*_desc-preproc_bold.nii.gz",
}


@dataclass
class SubjectOutputs:
    """Everything known about one subject's run (paths that exist, status records)."""

    subject: str
    output_dir: Path
    anat: dict[str, Path] = field(default_factory=dict)
    func: dict[str, Path] = field(default_factory=dict)
    relmats: list[Path] = field(default_factory=list)
    status: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    inputs: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"sub-{self.subject}"


def _first(folder: Path, pattern: str, exclude: tuple[str, ...] = ()) -> Path | None:
    hits = sorted(p for p in folder.glob(pattern) if not any(x in p.name for x in exclude))
    return hits[0] if hits else None


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
    anat_dir = out.output_dir / f"sub-{sub}" / "anat"
    for key, pattern in ANAT_PATTERNS.items():
        native = not pattern.startswith(("space-", "from-"))
        hit = _first(anat_dir, f"sub-{sub}_{pattern}", exclude=("space-",) if native else ())
        if hit is not None:
            out.anat[key] = hit
    func_dir = out.output_dir / f"sub-{sub}" / "func"
    for key, pattern in FUNC_PATTERNS.items():
        hit = _first(func_dir, f"sub-{sub}_{pattern}")
        if hit is not None:
            out.func[key] = hit
    out.relmats = sorted(func_dir.glob(f"sub-{sub}_*_relmat.tsv"))
    logs = out.output_dir / "logs"
    if (logs / f"sub-{sub}_participant.json").exists():
        out.status = _read_json(logs / f"sub-{sub}_participant.json")
    if (logs / f"sub-{sub}_failure.json").exists():
        out.failure = _read_json(logs / f"sub-{sub}_failure.json")
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
