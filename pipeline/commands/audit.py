"""``symprep audit``: rerun the participant stage on randomly transformed copies of one subject's
inputs and report how much each output moves.

Example::

    symprep audit BIDS_DIR OUTPUT_DIR --participant-label 01 --n-transforms 8 --seed 0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``audit`` on the ``symprep`` subcommand parser and return its parser."""
    p = subparsers.add_parser(
        "audit",
        help="invariance audit: rerun a subject under random pose/gauge/header transforms",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("bids_dir", type=Path, help="raw BIDS dataset")
    p.add_argument("output_dir", type=Path, help="symprep derivatives dataset (results go here)")
    p.add_argument(
        "--participant-label",
        required=True,
        nargs="+",
        help="subject(s) to audit (with or without sub-)",
    )
    p.add_argument(
        "--n-transforms",
        type=int,
        default=None,
        help="random group elements per subject (default: the configuration's "
        "audit.n_transforms, 4)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the random transforms (default: the configuration's audit.seed, 0)",
    )
    p.add_argument(
        "--reference",
        choices=["rerun", "outputs"],
        default=None,
        help="compare with a rerun of the untransformed subject, or with its outputs in "
        "OUTPUT_DIR made with the same configuration (default: audit.reference, rerun)",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML configuration file")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder for the reruns")
    p.add_argument("--nprocs", type=int, default=1, help="Nipype processes (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Audit each requested subject, then write the group summary; return 0 on success."""
    from pipeline.audit import run_audit, summarize_audits
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    config = load_config(args.config)
    options = config.audit
    n_transforms = options.n_transforms if args.n_transforms is None else args.n_transforms
    if n_transforms < 1:
        raise ConfigError(f"--n-transforms must be at least 1; got {n_transforms}")
    seed = options.seed if args.seed is None else args.seed
    reference = getattr(args, "reference", None) or options.reference
    for label in args.participant_label:
        table = run_audit(
            args.bids_dir,
            args.output_dir,
            label,
            n_transforms,
            config,
            seed=seed,
            work_dir=args.work_dir,
            nprocs=args.nprocs,
            progress=not getattr(args, "no_progress", False),
            reference_dir=Path(args.output_dir) if reference == "outputs" else None,
        )
        worst = table.groupby(["output", "measure"])["residual"].max() if len(table) else []
        for (output, measure), value in getattr(worst, "items", lambda: [])():
            logger.info("audit %s: %s %s max residual %.4g", label, output, measure, value)
    summary = summarize_audits(args.output_dir)
    logger.info(
        "audit summary of %d outputs in %s", len(summary), Path(args.output_dir) / "group" / "audit"
    )
    return 0
