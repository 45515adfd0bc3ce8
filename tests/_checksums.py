"""Checksums of a derivatives folder, to compare runs byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: not derivatives: run logs (timings, paths) and HTML reports (output path, date, run time)
NOT_COMPARED = ("logs/",)
NOT_COMPARED_SUFFIXES = (".html",)


def derivative_checksums(out: Path) -> dict[str, str]:
    """SHA-256 of every derivative under ``out`` (relative path → hex digest)."""
    sums = {}
    for path in sorted(p for p in Path(out).rglob("*") if p.is_file()):
        name = path.relative_to(out).as_posix()
        if name.startswith(NOT_COMPARED) or name.endswith(NOT_COMPARED_SUFFIXES):
            continue
        sums[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Files present in only one run or with different contents."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
