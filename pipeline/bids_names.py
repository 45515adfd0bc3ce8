"""BIDS / BIDS-Derivatives file names, fMRIPrep style.

Entities are written in the order the BIDS specification gives them, so every stage names its
outputs the same way::

    >>> derivative_path("out", "01", "anat", space="MNI152NLin2009aSym", res=2,
    ...                 desc="preproc", suffix="T1w").as_posix()
    'out/sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz'
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.errors import ParticipantError

#: entity order from the BIDS specification (the subset symprep writes)
ENTITY_ORDER = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "echo",
    "from",
    "to",
    "mode",
    "space",
    "cohort",
    "res",
    "den",
    "atlas",
    "roi",
    "label",
    "meas",
    "desc",
)
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def clean_label(label: str, entity: str = "sub") -> str:
    """Return a BIDS label without its ``sub-`` prefix, rejecting unsafe values.

    ``"01"`` and ``"sub-01"`` both give ``"01"``. Labels with path separators, dots, dashes or
    other non-alphanumeric characters (``"../x"``) raise :class:`ParticipantError`.
    """
    text = str(label).strip()
    if text.startswith(f"{entity}-"):
        text = text[len(entity) + 1 :]
    if not _LABEL.fullmatch(text):
        raise ParticipantError(
            f"invalid {entity} label {label!r}: BIDS labels are letters and digits only"
        )
    return text


def bids_name(suffix: str, extension: str = ".nii.gz", **entities: str | int | None) -> str:
    """Build a BIDS file name from entities (``from_`` may be used for the ``from`` entity)."""
    values = {k.rstrip("_"): v for k, v in entities.items() if v is not None}
    unknown = set(values) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{key}-{values[key]}" for key in ENTITY_ORDER if key in values]
    return "_".join([*parts, suffix]) + extension


_EXTENSIONS = (
    ".nii.gz",
    ".tsv.gz",
    ".nii",
    ".tsv",
    ".json",
    ".h5",
    ".txt",
    ".html",
    ".png",
    ".svg",
)


def parse_name(name: str) -> tuple[dict[str, str], str, str]:
    """Split a BIDS file name into entities, suffix and extension.

    >>> parse_name("sub-01_ses-2_task-rest_run-1_desc-preproc_bold.nii.gz")
    ({'sub': '01', 'ses': '2', 'task': 'rest', 'run': '1', 'desc': 'preproc'}, 'bold', '.nii.gz')

    Raises
    ------
    ValueError
        The name has no ``_suffix`` or an entity without a value.
    """
    ext = next((e for e in _EXTENSIONS if name.endswith(e)), "")
    if not ext and "." in name:
        ext = name[name.index(".") :]
    stem = name[: len(name) - len(ext)] if ext else name
    *parts, suffix = stem.split("_")
    if not parts or "-" in suffix:
        raise ValueError(f"{name!r} is not a BIDS file name (no _suffix)")
    entities = {}
    for part in parts:
        key, sep, value = part.partition("-")
        if not sep or not value:
            raise ValueError(f"{name!r}: {part!r} is not a BIDS entity")
        entities[key] = value
    return entities, suffix, ext


def derivative_path(
    output_dir: str | os.PathLike[str],
    subject: str,
    datatype: str | None,
    *,
    suffix: str,
    extension: str = ".nii.gz",
    **entities: str | int | None,
) -> Path:
    """Path of a derivative file: ``OUTPUT_DIR/sub-X/[datatype/]sub-X_<entities>_<suffix><ext>``.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivatives dataset.
    subject : str
        Participant label, with or without ``sub-``.
    datatype : str or None
        ``anat``, ``func``, … or None for files at the subject level.
    suffix : str
        BIDS suffix (``T1w``, ``mask``, ``probseg``, ``xfm``, ``bold``, ``timeseries``, …).
    extension : str, default=".nii.gz"
    **entities
        BIDS entities (``space``, ``res``, ``desc``, ``label``, ``from_``, ``to``, ``mode``, …).
    """
    sub = clean_label(subject)
    folder = Path(output_dir) / f"sub-{sub}"
    if datatype:
        folder = folder / datatype
    return folder / bids_name(suffix, extension, sub=sub, **entities)
