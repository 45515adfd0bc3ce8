"""Tables for the reports: number formatting, audit and model tables found under ``group/``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.reports.collect import read_table

#: columns that may hold the participant label in a group table
ID_COLUMNS = ("participant_id", "participant", "subject", "sub")
MAX_ROWS = 500


def fmt(value: Any) -> str:
    """Short text for a table cell: 4 significant digits for floats, ``n/a`` for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def frame_table(frame: pd.DataFrame, name: str = "") -> dict[str, Any]:
    """A DataFrame (index dropped) as ``{"name", "columns", "rows"}`` for the template macros."""
    frame = frame.head(MAX_ROWS)
    return {
        "name": name,
        "columns": [str(c) for c in frame.columns],
        "rows": [[fmt(v) for v in row] for row in frame.itertuples(index=False)],
    }


def _subject_rows(frame: pd.DataFrame, subject: str | None) -> pd.DataFrame | None:
    if subject is None:
        return frame
    for col in ID_COLUMNS:
        if col in frame:
            labels = frame[col].astype(str).str.removeprefix("sub-")
            return frame[labels == subject]
    return None


def _tables_under(folder: Path, subject: str | None, base: Path) -> list[dict[str, Any]]:
    tables = []
    for path in sorted(list(folder.rglob("*.tsv")) + list(folder.rglob("*.csv"))):
        frame = read_table(path)
        if frame is None or frame.empty:
            continue
        rows = _subject_rows(frame, subject)
        if rows is None or rows.empty:
            continue
        tables.append(frame_table(rows, path.relative_to(base).as_posix()))
    return tables


def audit_tables(output_dir: Path, subject: str | None = None) -> list[dict[str, Any]]:
    """Invariance-audit tables under ``group/audit/`` (only the subject's rows when given)."""
    folder = Path(output_dir) / "group" / "audit"
    return _tables_under(folder, subject, Path(output_dir) / "group") if folder.is_dir() else []


def model_tables(output_dir: Path, subject: str) -> list[dict[str, Any]]:
    """The subject's rows in model outputs (predictions, latent positions) under ``group/models/``."""
    folder = Path(output_dir) / "group" / "models"
    if not folder.is_dir():
        return []
    return [
        t
        for t in _tables_under(folder, subject, Path(output_dir) / "group")
        if not t["name"].endswith("log.csv")
    ]
