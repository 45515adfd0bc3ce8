"""``symprep config``: print the documented default configuration, or check a configuration file."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the subcommand."""
    p = subparsers.add_parser(
        "config", help="print the default configuration or check a file", description=__doc__
    )
    p.add_argument(
        "--check",
        metavar="FILE",
        default=None,
        help="validate FILE and print it with defaults filled in",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Print the defaults (or the validated file)."""
    import yaml

    from pipeline.config import load_config, render_config_yaml

    if args.check:
        config = load_config(args.check)
        sys.stdout.write(yaml.safe_dump(config.model_dump(), sort_keys=False))
    else:
        sys.stdout.write(render_config_yaml())
    return 0
