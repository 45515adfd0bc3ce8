"""The participant-level stages, one registry entry each: the one place a new stage is added.

Each :class:`Stage` names its configuration section, the stages it needs, the function that runs
it for one subject, its declared outputs (:data:`pipeline.outputs.STAGE_OUTPUTS`), the section of
the subject report that shows it and the measures the invariance audit takes of it.
:func:`pipeline.workflows.participant.run_participant` runs the enabled stages in registry order,
passing each the outputs of the ones before. Adding a stage (say diffusion MRI) means: a library
package (``pipeline/dwi/``), an interface module (``pipeline/interfaces/dwi.py``), a workflow
module (``pipeline/workflows/dwi.py``), its outputs in :mod:`pipeline.outputs`, and one
:func:`register_stage` call here (see CONTRIBUTING.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.outputs import STAGE_OUTPUTS, OutputSpec, run_label, source_entities

logger = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage's runner gets for one subject."""

    layout: Any
    subject: str
    output_dir: Path
    work_dir: Path
    config: Any
    nprocs: int
    filters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: outputs of the stages that ran before, by stage name
    results: dict[str, dict[str, Path]] = field(default_factory=dict)
    #: the subject's anatomical reference (checked before any stage runs)
    t1w: Path | None = None


@dataclass(frozen=True)
class Stage:
    """One participant-level stage.

    Attributes
    ----------
    name : str
        Stage name: the key of its outputs in the success record (``anat.t1w_mask``).
    section : str
        Configuration section with its options (an object with ``enabled``).
    run : callable
        ``run(context) -> dict[str, Path]``: every output of the stage for the subject.
    requires : tuple of str
        Stages whose outputs it reads (``context.results[name]``).
    report_section : str
        ``id`` of the subject report's section that shows it.
    audit_measures : tuple of str
        Measures :mod:`pipeline.audit` takes of its outputs.
    """

    name: str
    section: str
    run: Callable[[StageContext], dict[str, Path]]
    requires: tuple[str, ...] = ()
    report_section: str = ""
    audit_measures: tuple[str, ...] = ()

    @property
    def outputs(self) -> Mapping[str, OutputSpec]:
        """The stage's declared outputs."""
        return STAGE_OUTPUTS.get(self.name, {})

    def enabled(self, config) -> bool:
        """Whether the configuration runs this stage (its own section and its requirements)."""
        own = getattr(config, self.section, None)
        return bool(own is not None and getattr(own, "enabled", True))


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (after the stages it requires)."""
    missing = [r for r in stage.requires if r not in STAGES]
    if missing:
        raise ValueError(f"stage {stage.name!r} requires unregistered stages {missing}")
    if stage.name in STAGES:
        raise ValueError(f"stage {stage.name!r} is already registered")
    STAGES[stage.name] = stage
    return stage


def _run_anat(ctx: StageContext) -> dict[str, Path]:
    from pipeline.workflows.anat import run_anat_stage

    return run_anat_stage(
        t1w=ctx.t1w,
        subject=ctx.subject,
        output_dir=ctx.output_dir,
        work_dir=ctx.work_dir / f"sub-{ctx.subject}",
        options=ctx.config.anat,
        seed=ctx.config.seed,
        nprocs=ctx.nprocs,
    )


def _run_func(ctx: StageContext) -> dict[str, Path]:
    from pipeline.bids import bold_files
    from pipeline.workflows.func import run_func_stage

    runs = bold_files(
        ctx.layout, ctx.subject, task=ctx.config.func.task, filters=ctx.filters.get("bold")
    )
    logger.info("sub-%s: %d BOLD run(s)", ctx.subject, len(runs))
    outputs: dict[str, Path] = {}
    for bold in runs:  # every run of every session
        logger.info("sub-%s: functional stage, %s", ctx.subject, bold.name)
        paths = run_func_stage(
            bold=bold,
            subject=ctx.subject,
            output_dir=ctx.output_dir,
            work_dir=ctx.work_dir / f"sub-{ctx.subject}",
            options=ctx.config.func,
            anat=ctx.results["anat"],
            seed=ctx.config.seed,
            nprocs=ctx.nprocs,
        )
        run = run_label(source_entities(bold))
        outputs.update({f"{run}.{k}": v for k, v in paths.items()})
    return outputs


def _check_func_inputs(ctx: StageContext) -> None:
    from pipeline.bids import bold_files

    bold_files(ctx.layout, ctx.subject, task=ctx.config.func.task, filters=ctx.filters.get("bold"))


register_stage(
    Stage(
        name="anat",
        section="anat",
        run=_run_anat,
        report_section="anatomical",
        audit_measures=("rank_corr", "zscore_rmsd", "dice", "mean_abs_diff"),
    )
)
register_stage(
    Stage(
        name="func",
        section="func",
        run=_run_func,
        requires=("anat",),
        report_section="functional",
        audit_measures=("timeseries_corr", "confounds_corr", "fc_rmsd"),
    )
)

#: checks of a stage's inputs that run before any stage does (a bad BOLD fails the subject early)
INPUT_CHECKS: dict[str, Callable[[StageContext], None]] = {"func": _check_func_inputs}
