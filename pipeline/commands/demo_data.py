"""``symprep demo-data OUT``: write the synthetic multi-site BIDS dataset with ground truth."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

#: named sizes: ``tiny`` for tests, ``demo`` for ``make demo``, ``large`` for benchmarks
PRESETS = {
    "tiny": {
        "sites": 1,
        "subjects_per_site": 2,
        "resolution": 4.0,
        "bold_resolution": 6.0,
        "n_volumes": 24,
    },
    "demo": {
        "sites": 3,
        "subjects_per_site": 4,
        "resolution": 2.0,
        "bold_resolution": 4.0,
        "n_volumes": 60,
    },
    "large": {
        "sites": 4,
        "subjects_per_site": 25,
        "resolution": 1.0,
        "bold_resolution": 3.0,
        "n_volumes": 150,
    },
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the subcommand."""
    p = subparsers.add_parser(
        "demo-data", help="write the synthetic multi-site demo dataset", description=__doc__
    )
    p.add_argument("out", help="output folder (a BIDS dataset)")
    p.add_argument(
        "--size",
        choices=sorted(PRESETS),
        default="demo",
        help="preset; the flags below override it (default: demo)",
    )
    p.add_argument("--sites", type=int, default=None, help="number of sites")
    p.add_argument("--subjects-per-site", type=int, default=None, help="subjects per site")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resolution", type=float, default=None, help="base T1w voxel size in mm")
    p.add_argument("--bold-resolution", type=float, default=None, help="base BOLD voxel size in mm")
    p.add_argument("--n-volumes", type=int, default=None, help="BOLD volumes per run")
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        help="subjects generated in parallel (default: all cores; same files either way)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Generate the dataset."""
    from pipeline.data.demo import DemoSpec, make_demo_dataset

    values = dict(PRESETS[args.size])
    for key in values:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    for key in ("sites", "subjects_per_site", "n_volumes"):
        if values[key] < 1:
            raise InputError(f"--{key.replace('_', '-')} must be at least 1, got {values[key]}")
    for key in ("resolution", "bold_resolution"):
        if not 0.5 <= values[key] <= 8.0:
            raise InputError(
                f"--{key.replace('_', '-')} must be between 0.5 and 8 mm, got {values[key]}"
            )
    if values["n_volumes"] < 5:
        raise InputError(f"--n-volumes must be at least 5, got {values['n_volumes']}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a directory", out)
    spec = DemoSpec(seed=args.seed, **values)
    make_demo_dataset(out, spec, n_jobs=args.jobs or os.cpu_count() or 1)
    logger.info(
        "wrote %d subjects to %s (ground truth in sourcedata/groundtruth/)",
        spec.sites * spec.subjects_per_site,
        out,
    )
    return 0
