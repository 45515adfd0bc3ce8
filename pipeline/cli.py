"""The ``symprep`` command line (BIDS-App convention plus subcommands).

::

    symprep BIDS_DIR OUTPUT_DIR {participant,group} [--participant-label L ...] [--config FILE]
            [-w DIR] [--nthreads N] [--omp-nthreads N] [--mem MB] [--low-mem]
            [--bids-filter-file FILE] [--stop-on-first-crash] [--boilerplate-only]
            [--random-seed S] [--skip-bids-validation] [-v | -vv | -q]
    symprep demo-data OUT [--sites 3] [--subjects-per-site 4] [--seed 0] [--resolution 2]
    symprep fetch-abide OUT --site NYU --n-subjects 5
    symprep config                     # print the documented default configuration
    symprep train ...                  # train a model (see symprep train --help)
    symprep audit BIDS_DIR OUTPUT_DIR --participant-label X --n-transforms K
    symprep reports BIDS_DIR OUTPUT_DIR   # rebuild the HTML reports from existing outputs
    symprep harmonize {site-stats,fit,apply} ...  # distributed ComBat across sites

User errors (:class:`pipeline.errors.SymprepError`) are printed as one line, without a traceback,
and the exit status is non-zero; ``--debug`` shows the traceback. No parser accepts abbreviated
options (``allow_abbrev=False``): ``--mem 8000`` is 8000 MB, never a prefix of another flag.
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
    "harmonize": "pipeline.commands.harmonize",
}


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"symprep {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v shows Nipype's node progress, -vv debug messages",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _memory(value: str) -> float:
    from pipeline.commands.bids_app import parse_memory_mb

    return parse_memory_mb(value)


def build_bids_app_parser() -> argparse.ArgumentParser:
    """Parser of the BIDS-App form ``symprep BIDS_DIR OUTPUT_DIR {participant,group}``."""
    parser = argparse.ArgumentParser(
        prog="symprep",
        description="Preprocessing whose steps are invariance steps: atlas registration, gauge "
        "normalization, harmonization, equivariant models, and measured invariance.",
        epilog="Subcommands: " + ", ".join(SUBCOMMANDS) + " (symprep SUBCOMMAND --help).",
        allow_abbrev=False,
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
    parser.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        default=None,
        metavar="FILE",
        help="JSON file of pybids filters per input kind, e.g. "
        '{"t1w": {"session": "1"}, "bold": {"task": "rest", "run": [1, 2]}}',
    )
    parser.add_argument("--config", default=None, help="YAML configuration (see `symprep config`)")
    parser.add_argument("--work-dir", "-w", default=None, help="Nipype work directory (cache)")
    perf = parser.add_argument_group("performance")
    perf.add_argument(
        "--nthreads",
        "--n_cpus",
        "--n-cpus",
        "--nprocs",
        dest="nthreads",
        type=_positive_int,
        default=None,
        help="processes Nipype runs side by side (default: all cores)",
    )
    perf.add_argument(
        "--omp-nthreads",
        "--omp_nthreads",
        dest="omp_nthreads",
        type=_positive_int,
        default=None,
        help="threads per process (OpenMP, BLAS, ITK, torch); default min(nthreads - 1, 8)",
    )
    perf.add_argument(
        "--mem",
        "--mem_mb",
        "--mem-mb",
        dest="mem_mb",
        type=_memory,
        default=None,
        metavar="MEM",
        help="memory limit of the workflow, in MB, or with a unit (8000, 8000MB, 8GB, 8G)",
    )
    perf.add_argument(
        "--mem-gb",
        dest="mem_gb",
        type=float,
        default=None,
        help=argparse.SUPPRESS,  # deprecated alias of --mem, in GB
    )
    perf.add_argument(
        "--low-mem",
        "--low_mem",
        dest="low_mem",
        action="store_true",
        help="reduce memory use where possible, at the cost of disk space in the work directory",
    )
    workflow = parser.add_argument_group("workflow")
    workflow.add_argument(
        "--output-spaces",
        "--output_spaces",
        nargs="+",
        default=None,
        metavar="SPACE",
        help="template space of the outputs, NAME[:res-N]: MNI152NLin2009aSym (shipped, res-1 or "
        "res-2) or a template in TemplateFlow's cache ($TEMPLATEFLOW_HOME; never downloaded)",
    )
    workflow.add_argument(
        "--random-seed",
        "--random_seed",
        "--seed",
        dest="seed",
        type=int,
        default=None,
        help="random seed (same seed, same outputs)",
    )
    workflow.add_argument(
        "--stop-on-first-crash",
        action="store_true",
        help="stop a subject's workflow at its first failing node",
    )
    workflow.add_argument(
        "--boilerplate-only",
        "--boilerplate_only",
        dest="boilerplate_only",
        action="store_true",
        help="write the methods boilerplate only",
    )
    workflow.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        action="store_true",
        default=None,
        help="do not validate the input dataset",
    )
    _common_flags(parser)
    return parser


def build_subcommand_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """Parser of one subcommand and its module."""
    module = importlib.import_module(SUBCOMMANDS[name])
    parser = argparse.ArgumentParser(prog="symprep", allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    sub = module.add_parser(subparsers)
    _common_flags(sub)
    for p in {id(sub): sub, **{id(c): c for c in subparsers.choices.values()}}.values():
        p.allow_abbrev = False  # argparse reads the attribute when it parses
    return parser, module


class _StderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the current ``sys.stderr`` (which tests replace)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


#: -v: our progress and Nipype's node messages
VERBOSE = 15
logging.addLevelName(VERBOSE, "VERBOSE")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr: INFO by default, Nipype's INFO too with -v, DEBUG with -vv, WARNING with -q.

    Nipype's loggers (``nipype.workflow``, ``nipype.interface`` …) stay at WARNING by default,
    INFO with -v and DEBUG with -vv; :func:`pipeline.workflows.participant._tame_nipype_logging`
    reads the level set here.
    """
    if quiet:
        level = logging.WARNING
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = VERBOSE
    else:
        level = logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    nipype_level = (
        logging.WARNING
        if level >= logging.INFO
        else logging.INFO
        if level > logging.DEBUG
        else level
    )
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip"):
        logging.getLogger(name).setLevel(nipype_level)
    for noisy in ("distributed", "bids", "bidsschematools"):
        logging.getLogger(noisy).setLevel(
            logging.INFO if level <= logging.DEBUG else logging.WARNING
        )
    for noisy in ("matplotlib", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
