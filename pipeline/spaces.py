"""Output spaces (``--output-spaces``), as fMRIPrep spells them: ``NAME[:res-N]``.

symprep registers to the template it ships offline (MNI152NLin2009aSym from nilearn, 1 or 2 mm;
``res-N`` means what TemplateFlow means by it: the template's own resolution index, here 1 mm and
2 mm). Any other name is refused with one line that says whether TemplateFlow's cache holds it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.templates import TEMPLATE_NAME
from pipeline.errors import ConfigError

_SPACE = re.compile(r"^(?P<name>[A-Za-z0-9]+)(?::res-(?P<res>\d+))?$")
#: TemplateFlow's res index → mm for the template symprep ships
RESOLUTIONS = {1: 1, 2: 2}


@dataclass(frozen=True)
class OutputSpace:
    """One output space: a template and a resolution (mm)."""

    name: str
    resolution: int


def templateflow_home() -> Path:
    """TemplateFlow's cache folder (``$TEMPLATEFLOW_HOME``, default ``~/.cache/templateflow``)."""
    return Path(os.environ.get("TEMPLATEFLOW_HOME", Path.home() / ".cache" / "templateflow"))


def parse_output_spaces(values: list[str], default_resolution: int = 2) -> list[OutputSpace]:
    """Check ``--output-spaces`` values and return them as :class:`OutputSpace`.

    >>> parse_output_spaces(["MNI152NLin2009aSym:res-1"])
    [OutputSpace(name='MNI152NLin2009aSym', resolution=1)]

    Raises
    ------
    pipeline.errors.ConfigError
        A malformed value, a template symprep does not have offline (naming TemplateFlow's cache),
        a resolution it does not ship, or more than one resolution (one template grid per run).
    """
    spaces = []
    for value in values:
        match = _SPACE.match(value.strip())
        if not match:
            raise ConfigError(f"--output-spaces: {value!r} is not NAME or NAME:res-N")
        name, res = match["name"], match["res"]
        if name != TEMPLATE_NAME:
            home = templateflow_home()
            cached = (home / f"tpl-{name}").is_dir()
            where = (
                f"TemplateFlow's cache ({home}) holds tpl-{name}, but symprep registers to "
                f"{TEMPLATE_NAME} only"
                if cached
                else f"not in TemplateFlow's cache ({home}) either"
            )
            raise ConfigError(
                f"--output-spaces: template {name!r} is not available offline ({where}); "
                f"use {TEMPLATE_NAME}[:res-1|res-2]"
            )
        index = int(res) if res is not None else default_resolution
        if index not in RESOLUTIONS:
            raise ConfigError(
                f"--output-spaces: {name} has res-{index}; symprep ships "
                + ", ".join(f"res-{k} ({v} mm)" for k, v in RESOLUTIONS.items())
            )
        spaces.append(OutputSpace(name, RESOLUTIONS[index]))
    if len({s.resolution for s in spaces}) > 1:
        raise ConfigError(
            "--output-spaces: one resolution per run (the derivatives share one grid)"
        )
    return spaces
