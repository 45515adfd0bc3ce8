"""Options of the gauge stage (the ``gauge:`` section of the configuration)."""

from __future__ import annotations

from pydantic import Field

from pipeline._options import StrictOptions


class GaugeOptions(StrictOptions):
    """Group gauge stage: intensity normalization and ComBat harmonization across sites."""

    enabled: bool = Field(True, description="Run the group gauge stage.")
