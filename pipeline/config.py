"""The run configuration: one schema, read by the command line and by the Snakefile.

Every option is a pydantic field with a default and a description; ``configs/config.yaml`` is
rendered from this schema (:func:`render_config_yaml`) and a test keeps the two identical, so the
documentation cannot drift from the code. Unknown keys and wrong types are rejected with a
one-line :class:`~pipeline.errors.ConfigError` naming the key.

Each stage owns its section (``pipeline/<stage>/options.py``); this module only composes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from pipeline._options import StrictOptions
from pipeline.anat.options import AnatOptions
from pipeline.audit.options import AuditOptions
from pipeline.dask_cluster import DaskOptions
from pipeline.errors import ConfigError
from pipeline.func.options import FuncOptions
from pipeline.gauge.options import GaugeOptions
from pipeline.models.options import ModelOptions

#: the documented defaults shipped with the repository
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "config.yaml"


class Config(StrictOptions):
    """symprep configuration (``configs/config.yaml``)."""

    bids_dir: str | None = Field(
        None, description="Input BIDS dataset (the command line's BIDS_DIR overrides it)."
    )
    output_dir: str | None = Field(
        None,
        description="Output BIDS-Derivatives dataset (the command line's OUTPUT_DIR overrides it).",
    )
    work_dir: str | None = Field(
        None,
        description="Nipype work directory (caches intermediate results); default OUTPUT_DIR/../work.",
    )
    participant_label: list[str] = Field(
        default_factory=list,
        description="Participants to process ('01' or 'sub-01'); empty means all.",
    )
    skip_bids_validation: bool = Field(
        False, description="Skip the BIDS validation of the input dataset (pybids' validator)."
    )
    seed: int = Field(0, ge=0, description="Random seed: the same seed gives the same derivatives.")
    nprocs: int | None = Field(
        None, ge=1, description="CPU cores per subject job (null: all cores of the machine)."
    )
    mem_gb: float | None = Field(
        None, gt=0, description="Memory limit per subject job in GB (null: no limit)."
    )
    anat: AnatOptions = Field(default_factory=AnatOptions, description=AnatOptions.__doc__)
    func: FuncOptions = Field(default_factory=FuncOptions, description=FuncOptions.__doc__)
    gauge: GaugeOptions = Field(default_factory=GaugeOptions, description=GaugeOptions.__doc__)
    models: ModelOptions = Field(default_factory=ModelOptions, description=ModelOptions.__doc__)
    audit: AuditOptions = Field(default_factory=AuditOptions, description=AuditOptions.__doc__)
    dask: DaskOptions = Field(default_factory=DaskOptions, description=DaskOptions.__doc__)


def _format_error(err: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    value = err.get("input")
    return f"key {key!r}: {err['msg'].rstrip('.')} (got {value!r})"


def validate_config(
    data: dict[str, Any] | None, source: str | os.PathLike[str] = "<config>"
) -> Config:
    """Validate a configuration mapping; raise a one-line :class:`ConfigError` naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the configuration must be a mapping of keys, got {type(data).__name__}", source
        )
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        message = _format_error(errors[0])
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ConfigError(message, source) from None


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Read a YAML configuration file (or only defaults when ``path`` is None) and apply overrides.

    Parameters
    ----------
    path : path-like or None
        YAML file. Keys it leaves out take their defaults.
    **overrides
        Top-level keys set from the command line; ``None`` values are ignored.

    Returns
    -------
    Config
    """
    data: dict[str, Any] = {}
    source: str | os.PathLike[str] = "<defaults>"
    if path is not None:
        source = path
        path = Path(path)
        if not path.is_file():
            raise ConfigError("configuration file does not exist", path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"invalid YAML{where}", path) from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"the configuration must be a mapping of keys, got {type(data).__name__}", path
            )
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return validate_config(data, source)


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _render_model(model: type[BaseModel], values: BaseModel, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, field in model.model_fields.items():
        value = getattr(values, name)
        description = (field.description or "").strip()
        if isinstance(value, BaseModel):
            lines.append("")
            lines.extend(
                f"{pad}# {line.strip()}" for line in description.splitlines() if line.strip()
            )
            lines.append(f"{pad}{name}:")
            lines.extend(_render_model(type(value), value, indent + 1))
            continue
        for line in description.splitlines():
            lines.append(f"{pad}# {line.strip()}")
        lines.append(f"{pad}{name}: {_yaml_scalar(value.__class__.__name__ and value)}")
    return lines


def render_config_yaml() -> str:
    """Render the documented default configuration (the content of ``configs/config.yaml``)."""
    header = [
        "# symprep configuration: every option, its default and what it does.",
        "# Generated from pipeline/config.py by `symprep config`; edit a copy, not this file.",
        "# Unknown keys and wrong types are rejected, naming the key.",
    ]
    return (
        "\n".join([*header, *_render_model(Config, Config(), 0)]).replace("\n\n\n", "\n\n") + "\n"
    )
