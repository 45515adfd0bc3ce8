"""Write one benchmark's section of ``benchmarks/RESULTS.md`` without touching the others.

Each benchmark script owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import tempfile
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `benchmarks/`; each section is replaced when its script reruns.\n"
    "Machines here are noisy: compare the ratios measured in the same run, not absolute times.\n"
)


def machine_line(when: _dt.datetime | None = None) -> str:
    """Describe the machine a benchmark ran on (CPU count, platform, date).

    Parameters
    ----------
    when : datetime, optional
        When the measurements were taken (a report rewritten from saved results passes the
        time they were saved); now by default.
    """
    when = when or _dt.datetime.now(_dt.UTC)
    return (
        f"{os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}, "
        f"{when.astimezone(_dt.UTC):%Y-%m-%d %H:%M} UTC"
    )


def write_section(name: str, markdown: str, results: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of the results file, atomically."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = results.read_text() if results.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    fd, tmp = tempfile.mkstemp(dir=results.parent, prefix=".RESULTS.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, results)
