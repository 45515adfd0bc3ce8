"""Options of the invariance audit in the group stage (the ``audit:`` section of the configuration).

``symprep audit`` takes its defaults from here too; its flags override them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline._options import StrictOptions


class AuditOptions(StrictOptions):
    """Invariance audit: rerun subjects under random pose, gauge and header transforms."""

    enabled: bool = Field(
        False,
        description="Audit the participant stage in the group stage (Snakemake's group DAG; "
        "`symprep audit` runs it by hand).",
    )
    participant_label: list[str] = Field(
        default_factory=list,
        description="Subjects audited in the group stage ('01' or 'sub-01'); empty: the first "
        "participant.",
    )
    n_transforms: int = Field(4, ge=1, description="Random group elements per audited subject.")
    seed: int = Field(0, ge=0, description="Seed of the random group elements.")
    reference: Literal["rerun", "outputs"] = Field(
        "rerun",
        description="What the transformed runs are compared with: 'rerun' processes the "
        "untransformed subject again in the audit's scratch folder; 'outputs' takes its "
        "derivatives in OUTPUT_DIR (one participant run fewer; meaningful only when they were "
        "made with the same configuration, as in the Snakemake group stage).",
    )
