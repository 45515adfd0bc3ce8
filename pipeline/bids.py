"""BIDS inputs (pybids) and the BIDS-Derivatives output dataset.

:func:`check_bids_dir` is the one boundary check of an input dataset: it exists, has a
``dataset_description.json``, every file passes the BIDS validator that pybids uses (unless
validation is skipped), and it has subjects. :func:`select_participants` turns command-line labels
(``01`` or ``sub-01``) into known, safe labels.

One bad file never costs the dataset. Before pybids indexes the dataset every JSON sidecar is
parsed: a malformed or unreadable one (or a broken symbolic link) inside a subject's folder is
left out of the index, and that subject fails when symprep needs the file (:func:`t1w_file`,
:func:`bold_files` raise a one-line :class:`~pipeline.errors.InputError` naming it); the other
subjects run. A bad dataset-level sidecar (``task-rest_bold.json`` at the top) applies to everyone
and stops the run with one line naming it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from pipeline import __version__
from pipeline.bids_names import clean_label
from pipeline.errors import BIDSError, InputError, ParticipantError
from pipeline.io import check_header, check_writable_dir, read_json, write_json

logger = logging.getLogger(__name__)

#: folders of a BIDS dataset that the validator does not check
UNVALIDATED_DIRS = ("sourcedata", "derivatives", "code", "stimuli")
#: what pybids leaves out of its index by default (kept when symprep adds its own ignores)
_PYBIDS_IGNORE = (re.compile(r"^/(code|models|sourcedata|stimuli)"),)
#: top-level folders that neither the validator nor pybids' index look into
_UNINDEXED_DIRS = (*UNVALIDATED_DIRS, "models")
_NIFTI = (".nii", ".nii.gz")


def _dataset_files(root: Path, top: Path | None = None) -> Iterator[Path]:
    """Every file (and symbolic link) below ``top`` (default ``root``) that pybids would index."""
    top = root if top is None else top
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not (here == root and d in _UNINDEXED_DIRS)
        )
        yield from (here / name for name in sorted(filenames) if not name.startswith("."))


def _broken_link(path: str | os.PathLike[str]) -> str | None:
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"
    return None


def sidecar_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a JSON sidecar cannot be used, in one line (``None`` when it can).

    It must be readable, valid JSON, an object, and any ``RepetitionTime`` in it a finite number
    of seconds above zero.
    """
    broken = _broken_link(path)
    if broken:
        return broken
    try:
        content = read_json(path)
    except InputError as exc:
        return exc.message
    if not isinstance(content, dict):
        return f"sidecar is not a JSON object (it is a {type(content).__name__})"
    if "RepetitionTime" in content:
        tr = content["RepetitionTime"]
        if (
            isinstance(tr, bool)
            or not isinstance(tr, int | float)
            or not math.isfinite(tr)
            or tr <= 0
        ):
            return f"RepetitionTime must be a positive number of seconds, got {tr!r}"
    return None


def _subject_of(rel: Path) -> str | None:
    first = rel.parts[0] if rel.parts else ""
    return first[4:] if first.startswith("sub-") and len(rel.parts) > 1 else None


def scan_sidecars(bids_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Every unusable JSON sidecar or broken symbolic link of a dataset: relative path → reason."""
    root = Path(bids_dir)
    problems = {}
    for path in _dataset_files(root):
        reason = sidecar_problem(path) if path.name.endswith(".json") else _broken_link(path)
        if reason:
            problems[path.relative_to(root).as_posix()] = reason
    return problems


def _entities(name: str) -> tuple[dict[str, str], str]:
    stem = name.split(".")[0]
    parts = stem.split("_")
    return dict(p.split("-", 1) for p in parts[:-1] if "-" in p), parts[-1]


def subject_file_problems(
    bids_dir: str | os.PathLike[str],
    subject: str,
    suffix: str,
    task: str | None = None,
    images: Iterable[str | os.PathLike[str]] = (),
) -> list[str]:
    """One line per unusable file of ``subject`` with ``suffix`` (``T1w``, ``bold``).

    Checked: the subject's JSON sidecars and symbolic links with that suffix (of ``task`` when
    given; sidecars without a task entity apply to every task) and the headers of ``images``
    (:func:`pipeline.io.check_header`: declared size against the file, data type, voxel sizes).
    """
    root = Path(bids_dir)
    folder = root / f"sub-{subject}"
    problems = []
    if folder.is_dir():
        for path in _dataset_files(root, folder):
            ents, suf = _entities(path.name)
            if suf != suffix or (task and ents.get("task", task) != task):
                continue
            if path.name.endswith(".json"):
                reason = sidecar_problem(path)
            elif path.name.endswith(_NIFTI):
                reason = _broken_link(path)
            else:
                continue
            if reason:
                problems.append(f"{path}: {reason}")
    for image in images:
        try:
            check_header(image)
        except InputError as exc:
            problems.append(str(exc))
    return list(dict.fromkeys(problems))


def _raise_first(problems: list[str], subject: str) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more unusable file(s) of sub-{subject})"
        raise InputError(problems[0] + (more if len(problems) > 1 else ""))


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
        The directory is missing, not BIDS, or has no subjects, or a dataset-level sidecar is
        unusable; one line naming the path. Unusable files inside a subject's folder are left out
        of the index instead (logged); that subject fails when it needs them.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

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
    problems = scan_sidecars(root)
    shared = {rel: why for rel, why in problems.items() if _subject_of(Path(rel)) is None}
    if shared:
        rel, why = next(iter(shared.items()))
        more = f" (and {len(shared) - 1} more dataset-level file(s))" if len(shared) > 1 else ""
        raise BIDSError(f"{why}; it applies to every subject, fix it{more}", root / rel)
    by_subject: dict[str, list[str]] = {}
    for rel, why in problems.items():
        by_subject.setdefault(_subject_of(Path(rel)) or "", []).append(f"{rel}: {why}")
    for subject, lines in by_subject.items():
        logger.warning(
            "sub-%s: %d unusable file(s) left out of the index (the subject fails if it needs "
            "them): %s",
            subject,
            len(lines),
            "; ".join(lines),
        )
    ignore = list(_PYBIDS_IGNORE) + [re.compile("^/" + re.escape(rel) + "$") for rel in problems]
    layout = BIDSLayout(
        str(root), validate=False, indexer=BIDSLayoutIndexer(validate=False, ignore=ignore)
    )
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


def t1w_file(layout, subject: str, filters: dict | None = None) -> Path:
    """The subject's anatomical reference: the T1w of the first session and run.

    Its sidecars and header are checked first (:func:`subject_file_problems`): an unusable file
    raises a one-line :class:`~pipeline.errors.InputError` naming it. ``filters`` are pybids
    entity filters (the ``t1w`` entry of ``--bids-filter-file``).
    """
    _raise_first(subject_file_problems(layout.root, subject, "T1w"), subject)
    t1w = find_one(layout, subject, suffix="T1w", datatype="anat", **(filters or {}))
    check_header(t1w)
    return t1w


def bold_files(
    layout, subject: str, task: str | None = "rest", filters: dict | None = None
) -> list[Path]:
    """Every BOLD run of ``task`` (all tasks when None) in every session of the subject, sorted.

    Their sidecars and headers are checked first (:func:`subject_file_problems`): an unusable
    file raises a one-line :class:`~pipeline.errors.InputError` naming it. ``filters`` are pybids
    entity filters (the ``bold`` entry of ``--bids-filter-file``).
    """
    extra = dict(filters or {})
    filters = {"suffix": "bold", "datatype": "func", **extra}
    if task and "task" not in extra:
        filters["task"] = task
    runs = [
        Path(f)
        for f in layout.get(
            subject=subject, return_type="file", extension=[".nii", ".nii.gz"], **filters
        )
    ]
    _raise_first(subject_file_problems(layout.root, subject, "bold", task, images=runs), subject)
    return runs


def read_participants(bids_dir: str | os.PathLike[str], site_column: str = "site") -> pd.DataFrame:
    """``participants.tsv`` indexed by label without ``sub-`` (columns as in the file).

    ``site_column`` names the column that holds each participant's site or scanner (ABIDE's
    phenotypic files call it ``SITE_ID``); when it is not ``site``, its values are copied into a
    ``site`` column, which is what the harmonization and the models read.
    """
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        raise BIDSError("participants.tsv is missing", Path(bids_dir))
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
    if "participant_id" not in table:
        raise BIDSError("participants.tsv has no participant_id column", path)
    table.index = [clean_label(p) for p in table.pop("participant_id")]
    table.index.name = "participant"
    if site_column != "site" and site_column in table:
        table["site"] = table[site_column].astype(str)
    return table


#: where symprep's code lives (dataset_description.json's GeneratedBy.CodeURL)
CODE_URL = "https://github.com/symprep/symprep"
#: what the BIDS validator should not check in the derivatives (fMRIPrep writes the same kind)
BIDSIGNORE = (
    "logs/",
    "group/",
    "figures/",
    "*.html",
    "*_xfm.txt",
    "*_qc.tsv",
    "*_qc.json",
    "*_boldmap.nii.gz",
    "*_features.tsv",
    "*_spectrum.tsv",
    "audit/",
)


def init_derivatives(
    output_dir: str | os.PathLike[str],
    bids_dir: str | os.PathLike[str] | None,
    config_summary: dict | None = None,
) -> Path:
    """Create the output BIDS-Derivatives dataset and its ``dataset_description.json``."""
    out = check_writable_dir(output_dir, "output folder")
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
    description["GeneratedBy"][0]["CodeURL"] = CODE_URL
    container = os.environ.get("SYMPREP_CONTAINER")  # set in the image (containers/Dockerfile)
    if container:
        description["GeneratedBy"][0]["Container"] = {"Type": "docker", "Tag": container}
    if bids_dir is not None:
        # BIDS URIs name the source; the absolute location is kept for humans
        description["DatasetLinks"] = {"raw": Path(bids_dir).resolve().as_uri()}
        description["SourceDatasets"] = [
            {"URI": "bids:raw:", "URL": Path(bids_dir).resolve().as_uri()}
        ]
    if config_summary:
        description["GeneratedBy"][0]["Configuration"] = config_summary
    write_json(out / "dataset_description.json", description)
    bidsignore = out / ".bidsignore"
    if not bidsignore.exists():
        from pipeline.io import write_text

        write_text(bidsignore, "\n".join(BIDSIGNORE) + "\n")
    return out


def subjects_from_derivatives(output_dir: str | os.PathLike[str]) -> Sequence[str]:
    """Labels of subjects with a folder in a derivatives dataset."""
    return sorted(p.name[4:] for p in Path(output_dir).glob("sub-*") if p.is_dir())
