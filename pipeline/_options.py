"""Base class of every configuration section: strict (unknown keys and wrong types are rejected)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictOptions(BaseModel):
    """A configuration section. Unknown keys are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False)
