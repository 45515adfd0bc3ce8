"""``symprep fetch-abide OUT --site NYU --n-subjects 5``: download ABIDE (raw BIDS or preprocessed)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the subcommand."""
    from pipeline.data.abide import ABIDE_SITES, DEFAULT_BASE_URL

    p = subparsers.add_parser(
        "fetch-abide",
        help="download ABIDE data (raw BIDS or ABIDE Preprocessed)",
        description=__doc__,
    )
    p.add_argument("out", help="destination folder")
    p.add_argument("--site", required=True, help=f"ABIDE site ({', '.join(ABIDE_SITES)})")
    p.add_argument("--n-subjects", type=int, default=None, help="first N subjects (default: all)")
    p.add_argument("--anat-only", action="store_true", help="skip functional runs")
    p.add_argument(
        "--preprocessed",
        action="store_true",
        help="fetch ABIDE Preprocessed (nilearn fetch_abide_pcp) instead of raw BIDS",
    )
    p.add_argument(
        "--pipeline", default="cpac", help="ABIDE Preprocessed pipeline (cpac, ccs, dparsf, niak)"
    )
    p.add_argument(
        "--derivatives",
        nargs="+",
        default=["func_preproc"],
        help="ABIDE Preprocessed derivatives (e.g. func_preproc rois_cc200)",
    )
    p.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help="bucket URL (for mirrors and tests)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Fetch."""
    from pipeline.data.abide import fetch_abide_preprocessed, fetch_abide_raw

    if args.preprocessed:
        fetch_abide_preprocessed(
            args.out,
            args.site,
            args.n_subjects,
            args.pipeline,
            tuple(args.derivatives),
            base_url=args.base_url,
        )
    else:
        fetch_abide_raw(
            args.out,
            args.site,
            args.n_subjects,
            base_url=args.base_url,
            include_func=not args.anat_only,
        )
    logger.info("ABIDE %s data in %s", args.site, args.out)
    return 0
