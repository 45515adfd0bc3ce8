"""The ``symprep`` command line (BIDS-App convention plus subcommands).

::

    symprep BIDS_DIR OUTPUT_DIR {participant,group} [--participant-label L ...] [--config FILE]
            [--work-dir DIR] [--nprocs N] [--mem-gb G] [--seed S] [--skip-bids-validation]
    symprep demo-data OUT [--sites 3] [--subjects-per-site 4] [--seed 0] [--resolution 2]
    symprep fetch-abide OUT --site NYU --n-subjects 5
    symprep config                     # print the documented default configuration
    symprep train ...                  # train a model (see symprep train --help)
    symprep audit BIDS_DIR OUTPUT_DIR --participant-label X --n-transforms K
    symprep reports BIDS_DIR OUTPUT_DIR   # rebuild the HTML reports from existing outputs

User errors (:class:`pipeline.errors.SymprepError`) are printed as one line, without a traceback,
and the exit status is non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import SymprepError

logger = logging.getLogger("symprep")

#: subcommand name -> module in pipeline.commands with add_parser(subparsers) and run(args)
SUBCOMMANDS = {
    "demo-data": "pipeline.commands.demo_data",
    "fetch-abide": "pipeline.commands.fetch_abide",
    "config": "pipeline.commands.show_config",
    "train": "pipeline.commands.train",
    "audit": "pipeline.commands.audit",
    "reports": "pipeline.commands.reports",
}


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"symprep {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def build_bids_app_parser() -> argparse.ArgumentParser:
    """Parser of the BIDS-App form ``symprep BIDS_DIR OUTPUT_DIR {participant,group}``."""
    parser = argparse.ArgumentParser(
        prog="symprep",
        description="Preprocessing whose steps are invariance steps: atlas registration, gauge "
        "normalization, harmonization, equivariant models, and measured invariance.",
        epilog="Subcommands: " + ", ".join(SUBCOMMANDS) + " (symprep SUBCOMMAND --help).",
    )
    parser.add_argument("bids_dir", help="input BIDS dataset")
    parser.add_argument("output_dir", help="output BIDS-Derivatives dataset")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="participants to process ('01' or 'sub-01'); default all",
    )
    parser.add_argument("--config", default=None, help="YAML configuration (see `symprep config`)")
    parser.add_argument("--work-dir", "-w", default=None, help="Nipype work directory (cache)")
    parser.add_argument("--nprocs", "--nthreads", type=int, default=None, help="CPU cores to use")
    parser.add_argument("--mem-gb", type=float, default=None, help="memory limit in GB")
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (same seed, same outputs)"
    )
    parser.add_argument(
        "--skip-bids-validation",
        action="store_true",
        default=None,
        help="do not validate the input dataset",
    )
    _common_flags(parser)
    return parser


def build_subcommand_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """Parser of one subcommand and its module."""
    module = importlib.import_module(SUBCOMMANDS[name])
    parser = argparse.ArgumentParser(prog="symprep")
    subparsers = parser.add_subparsers(dest="command", required=True)
    sub = module.add_parser(subparsers)
    _common_flags(sub)
    return parser, module


class _StderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the current ``sys.stderr`` (which tests replace)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with -vv, WARNING with --quiet."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in (
        "nipype.workflow",
        "nipype.interface",
        "nipype.utils",
        "distributed",
        "bids",
        "bidsschematools",
        "matplotlib",
        "fsspec",
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            parser, module = build_subcommand_parser(argv[0])
            args = parser.parse_args(argv)
            setup_logging(args.verbose, args.quiet)
            return int(module.run(args) or 0)
        args = build_bids_app_parser().parse_args(argv)
        setup_logging(args.verbose, args.quiet)
        from pipeline.commands.bids_app import run

        return run(args)
    except SymprepError as exc:
        if debug:
            raise
        print(f"symprep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("symprep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
