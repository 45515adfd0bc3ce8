"""``symprep BIDS_DIR OUTPUT_DIR {participant,group}``: the BIDS-App entry point."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pipeline.errors import InputError

logger = logging.getLogger(__name__)


def _threads(nprocs: int) -> None:
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    ):
        os.environ[var] = str(nprocs)


def run(args: argparse.Namespace) -> int:
    """Run the participant or group level; exit status 1 if any subject failed."""
    from pipeline.bids import check_bids_dir, init_derivatives, select_participants
    from pipeline.config import load_config

    config = load_config(
        args.config,
        bids_dir=args.bids_dir,
        output_dir=args.output_dir,
        work_dir=args.work_dir,
        participant_label=args.participant_label,
        nprocs=args.nprocs,
        mem_gb=args.mem_gb,
        seed=args.seed,
        skip_bids_validation=args.skip_bids_validation,
    )
    bids_dir = Path(config.bids_dir)
    output_dir = Path(config.output_dir)
    if output_dir.resolve() == bids_dir.resolve():
        raise InputError("OUTPUT_DIR must differ from BIDS_DIR", output_dir)
    work_dir = Path(config.work_dir) if config.work_dir else output_dir.parent / "work"
    nprocs = config.nprocs or os.cpu_count() or 1
    _threads(nprocs)
    layout = check_bids_dir(bids_dir, validate=not config.skip_bids_validation)
    subjects = select_participants(layout, config.participant_label)
    init_derivatives(output_dir, bids_dir, {"seed": config.seed})

    if args.analysis_level == "participant":
        from pipeline.workflows.participant import run_participants

        results = run_participants(layout, subjects, output_dir, work_dir, config, nprocs)
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"symprep: sub-{r.subject} failed ({r.stage}): {r.error}")
        logger.info("%d of %d participants done", len(results) - len(failed), len(results))
        return 1 if failed else 0

    from pipeline.group import run_group

    return run_group(bids_dir, output_dir, subjects, config)
