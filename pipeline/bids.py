"""BIDS inputs (pybids) and the BIDS-Derivatives output dataset.

:func:`check_bids_dir` is the one boundary check of an input dataset: it exists, has a
``dataset_description.json``, every file passes the BIDS validator that pybids uses (unless
validation is skipped), and it has subjects. :func:`select_participants` turns command-line labels
(``01`` or ``sub-01``) into known, safe labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from pipeline import __version__
from pipeline.bids_names import clean_label
from pipeline.errors import BIDSError, InputError, ParticipantError
from pipeline.io import read_json, write_json

logger = logging.getLogger(__name__)

#: folders of a BIDS dataset that the validator does not check
UNVALIDATED_DIRS = ("sourcedata", "derivatives", "code", "stimuli")


def invalid_bids_files(bids_dir: str | os.PathLike[str]) -> list[str]:
    """Relative paths (``/sub-01/...``) of files that the BIDS validator rejects."""
    from bids_validator import BIDSValidator

    root = Path(bids_dir)
    validator = BIDSValidator()
    bad = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or rel.parts[0] in UNVALIDATED_DIRS or rel.name.startswith("."):
            continue
        if rel.parts[0] in {"README", "CHANGES", "LICENSE"} or rel.name in {
            "README.md",
            "README.txt",
        }:
            continue
        if not validator.is_bids("/" + rel.as_posix()):
            bad.append("/" + rel.as_posix())
    return bad


def check_bids_dir(bids_dir: str | os.PathLike[str], *, validate: bool = True):
    """Check an input BIDS dataset and index it with pybids.

    Parameters
    ----------
    bids_dir : path-like
        Root of the raw BIDS dataset.
    validate : bool, default=True
        Run the BIDS validator on every file name and reject the dataset if one fails.

    Returns
    -------
    bids.BIDSLayout

    Raises
    ------
    pipeline.errors.BIDSError
        The directory is missing, not BIDS, or has no subjects; one line naming the path.
    """
    from bids import BIDSLayout

    root = Path(bids_dir)
    if not root.exists():
        raise BIDSError("input directory does not exist", root)
    if not root.is_dir():
        raise BIDSError("input path is not a directory", root)
    description = root / "dataset_description.json"
    if not description.is_file():
        raise BIDSError("not a BIDS dataset: dataset_description.json is missing", root)
    meta = read_json(description)
    if not isinstance(meta, dict) or "Name" not in meta or "BIDSVersion" not in meta:
        raise BIDSError("dataset_description.json needs 'Name' and 'BIDSVersion'", description)
    if validate:
        bad = invalid_bids_files(root)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise BIDSError(
                f"file {bad[0]!r} is not valid BIDS{more}; fix it or pass --skip-bids-validation",
                root,
            )
    layout = BIDSLayout(str(root), validate=False)
    if not layout.get_subjects():
        raise BIDSError("dataset has no subjects (no sub-* folders with data)", root)
    return layout


def select_participants(layout, labels: Iterable[str] | None) -> list[str]:
    """Known participant labels (without ``sub-``), all of them when ``labels`` is empty.

    Raises :class:`ParticipantError` for unsafe labels (``../x``) or labels not in the dataset.
    """
    available = sorted(layout.get_subjects())
    wanted = [clean_label(label) for label in (labels or [])]
    if not wanted:
        return available
    unknown = [label for label in wanted if label not in available]
    if unknown:
        raise ParticipantError(
            f"participant(s) {', '.join('sub-' + u for u in unknown)} not found in "
            f"{layout.root} (available: {', '.join(available[:10])}{' …' if len(available) > 10 else ''})"
        )
    return list(dict.fromkeys(wanted))


def find_one(layout, subject: str, **filters) -> Path:
    """The single file of ``subject`` matching pybids ``filters``; error if none."""
    files = layout.get(
        subject=subject, return_type="file", extension=[".nii", ".nii.gz"], **filters
    )
    if not files:
        what = ", ".join(f"{k}={v}" for k, v in filters.items())
        raise InputError(f"sub-{subject} has no file with {what}", layout.root)
    if len(files) > 1:
        logger.info("sub-%s: %d files match %s; using %s", subject, len(files), filters, files[0])
    return Path(files[0])


def t1w_file(layout, subject: str) -> Path:
    """The subject's T1w image (the first run when several exist)."""
    return find_one(layout, subject, suffix="T1w", datatype="anat")


def bold_files(layout, subject: str, task: str | None = "rest") -> list[Path]:
    """The subject's BOLD runs of ``task`` (all tasks when None)."""
    filters = {"suffix": "bold", "datatype": "func"}
    if task:
        filters["task"] = task
    return [
        Path(f)
        for f in layout.get(
            subject=subject, return_type="file", extension=[".nii", ".nii.gz"], **filters
        )
    ]


def read_participants(bids_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``participants.tsv`` indexed by label without ``sub-`` (columns as in the file)."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        raise BIDSError("participants.tsv is missing", Path(bids_dir))
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
    if "participant_id" not in table:
        raise BIDSError("participants.tsv has no participant_id column", path)
    table.index = [clean_label(p) for p in table.pop("participant_id")]
    table.index.name = "participant"
    return table


def init_derivatives(
    output_dir: str | os.PathLike[str],
    bids_dir: str | os.PathLike[str] | None,
    config_summary: dict | None = None,
) -> Path:
    """Create the output BIDS-Derivatives dataset and its ``dataset_description.json``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "symprep derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "symprep",
                "Version": __version__,
                "Description": "Preprocessing whose steps are invariance steps, with invariance audits.",
            }
        ],
    }
    if bids_dir is not None:
        description["SourceDatasets"] = [{"URL": Path(bids_dir).resolve().as_uri()}]
    if config_summary:
        description["GeneratedBy"][0]["Configuration"] = config_summary
    write_json(out / "dataset_description.json", description)
    return out


def subjects_from_derivatives(output_dir: str | os.PathLike[str]) -> Sequence[str]:
    """Labels of subjects with a folder in a derivatives dataset."""
    return sorted(p.name[4:] for p in Path(output_dir).glob("sub-*") if p.is_dir())
