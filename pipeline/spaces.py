"""Output spaces (``--output-spaces``), as fMRIPrep spells them: ``NAME[:res-N]``.

symprep registers to one template per run: the one it ships offline (MNI152NLin2009aSym from
nilearn, ``res-1`` = 1 mm and ``res-2`` = 2 mm) or any template TemplateFlow's cache holds
(:mod:`pipeline.data.templates`; ``res-N`` means what TemplateFlow means by it, the template's own
resolution index). A template or resolution that is not available offline is refused with one line
naming what is missing; nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

from pipeline.anat.options import AnatOptions
from pipeline.data.templates import TemplateNotAvailableError, check_template
from pipeline.errors import ConfigError

#: the resolution indices a run can use: those ``anat.resolution`` accepts
RESOLUTION_INDICES = get_args(AnatOptions.model_fields["resolution"].annotation)
_SPACE = re.compile(r"^(?P<name>[A-Za-z0-9]+)(?::res-(?P<res>\d+))?$")


@dataclass(frozen=True)
class OutputSpace:
    """One output space: a template and its resolution index (TemplateFlow's ``res-``)."""

    name: str
    resolution: int


def parse_output_spaces(values: list[str], default_resolution: int = 2) -> list[OutputSpace]:
    """Check ``--output-spaces`` values and return them as :class:`OutputSpace`.

    >>> parse_output_spaces(["MNI152NLin2009aSym:res-1"])
    [OutputSpace(name='MNI152NLin2009aSym', resolution=1)]

    Raises
    ------
    pipeline.errors.ConfigError
        A malformed value, a template or resolution not available offline (naming TemplateFlow's
        cache and the missing file), or more than one space (one template grid per run).
    """
    spaces = []
    for value in values:
        match = _SPACE.match(value.strip())
        if not match:
            raise ConfigError(f"--output-spaces: {value!r} is not NAME or NAME:res-N")
        name = match["name"]
        index = int(match["res"]) if match["res"] is not None else default_resolution
        if index not in RESOLUTION_INDICES:
            raise ConfigError(
                f"--output-spaces: {name} res-{index}: symprep writes res-1 or res-2 grids "
                "(anat.resolution)"
            )
        try:
            check_template(name, index)
        except TemplateNotAvailableError as exc:
            raise ConfigError(f"--output-spaces: {exc}") from None
        spaces.append(OutputSpace(name, index))
    if len(set(spaces)) > 1:
        raise ConfigError(
            "--output-spaces: one template and resolution per run (the derivatives share one "
            "grid); got " + ", ".join(f"{s.name}:res-{s.resolution}" for s in dict.fromkeys(spaces))
        )
    return spaces
