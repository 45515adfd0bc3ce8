"""``symprep reports``: rebuild the HTML reports from the outputs already in OUTPUT_DIR.

Example::

    symprep reports BIDS_DIR OUTPUT_DIR --participant-label 01 02
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``reports`` on the ``symprep`` subcommand parser and return its parser."""
    p = subparsers.add_parser(
        "reports",
        help="regenerate the per-subject and group HTML reports from existing outputs",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("bids_dir", type=Path, help="the raw BIDS dataset (inputs list, bias field)")
    p.add_argument("output_dir", type=Path, help="symprep output folder")
    p.add_argument(
        "--participant-label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="subjects to report (default: every subject found in OUTPUT_DIR)",
    )
    p.add_argument("--no-group", action="store_true", help="skip the group report")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the reports; return 0, or 1 when a subject's report could not be built."""
    from tqdm.auto import tqdm

    from pipeline.bids_names import clean_label
    from pipeline.errors import InputError, SymprepError
    from pipeline.reports import build_group_report, build_subject_report
    from pipeline.reports.collect import subjects_in

    out = Path(args.output_dir)
    if not out.is_dir():
        raise InputError(f"output folder {out} does not exist (run the participant stage first)")
    bids = Path(args.bids_dir) if args.bids_dir is not None else None
    if bids is not None and not bids.is_dir():
        raise InputError(f"BIDS folder {bids} does not exist")
    found = subjects_in(out)
    if args.participant_label:
        subjects = [clean_label(s) for s in args.participant_label]
        unknown = [s for s in subjects if s not in found]
        if unknown:
            raise InputError(f"no outputs for participant(s) {', '.join(unknown)} in {out}")
    else:
        subjects = found
    failed = 0
    for sub in tqdm(subjects, desc="reports", unit="subject", disable=len(subjects) < 2):
        try:
            path = build_subject_report(out, sub, bids)
            logger.info("sub-%s: %s", sub, path)
        except SymprepError as exc:
            logger.error("sub-%s: report not built: %s", sub, exc)
            failed += 1
    if not args.no_group and (out / "group").is_dir():
        logger.info("group report: %s", build_group_report(out))
    return 1 if failed else 0
