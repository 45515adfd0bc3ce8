"""``symprep BIDS_DIR OUTPUT_DIR {participant,group}``: the BIDS-App entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

_MEM = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_SCALE_MB = {"k": 1e-3, "m": 1.0, "g": 1e3, "t": 1e6}


def _write_citation(output_dir: Path, config) -> Path:
    """``logs/CITATION.md``: the methods boilerplate of this configuration, with references."""
    from pipeline.io import write_text
    from pipeline.reports.methods import boilerplate, citation_markdown

    return write_text(output_dir / "logs" / "CITATION.md", citation_markdown(boilerplate(config)))


def _save_run_config(output_dir: Path, config, level: str) -> Path:
    """The resolved configuration of this run, ``logs/config-{level}-{time}.yaml`` (every run kept)."""
    import time

    import yaml

    from pipeline.io import write_text

    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = output_dir / "logs" / f"config-{level}-{stamp}-{os.getpid()}.yaml"
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    logger.info("resolved configuration saved to %s", path)
    return write_text(path, text)


def parse_memory_mb(value: str) -> float:
    """Memory in MB from ``8000``, ``8000MB``, ``8GB``, ``8G``, ``7.5GiB``, ``2T`` …

    A bare number is MB (fMRIPrep's ``--mem``); ``K``/``M``/``G``/``T`` (with or without ``B``)
    are decimal multiples, ``KiB``/``MiB``/``GiB``/``TiB`` binary ones.
    """
    match = _MEM.match(str(value))
    if not match or (match.group(3) and not match.group(2)):
        raise argparse.ArgumentTypeError(
            f"invalid memory {value!r} (a number of MB, or with a unit: 8000MB, 8GB, 8G)"
        )
    number, unit, binary = float(match.group(1)), match.group(2).lower() or "m", match.group(3)
    if binary:
        mb = number * 1024 ** "kmgt".index(unit) * 1024 / 1e6
    else:
        mb = number * _SCALE_MB[unit]
    if mb <= 0:
        raise argparse.ArgumentTypeError(f"memory must be positive, got {value!r}")
    return mb


def load_bids_filters(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read and check a ``--bids-filter-file``: ``{"bold": {"session": "1", "run": [1, 2]}, …}``.

    Each key names a kind of input (``t1w``, ``bold`` …) and maps to pybids entity filters; values
    are strings, numbers, booleans, null (entity absent) or lists of them. Problems raise a
    one-line :class:`~pipeline.errors.InputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("BIDS filter file does not exist", path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read the BIDS filter file ({exc.__class__.__name__})", path
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON in the BIDS filter file (line {exc.lineno})", path
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            "a BIDS filter file must be a JSON object of input kinds, e.g. "
            '{"bold": {"session": "1"}}',
            path,
        )
    entities = _pybids_entities()
    scalar = str | int | float | bool | type(None)
    for kind, filters in data.items():
        if not isinstance(filters, dict):
            raise InputError(f"filters of {kind!r} must be a JSON object of entities", path)
        for entity, value in filters.items():
            if entities and entity not in entities:
                raise InputError(f"unknown BIDS entity {entity!r} in the filters of {kind!r}", path)
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, scalar) for v in values):
                raise InputError(
                    f"filter {kind}.{entity} must be a string, number, null or a list of them",
                    path,
                )
    return data


def _pybids_entities() -> set[str]:
    try:
        from bids.layout.models import Config
    except ImportError:  # pragma: no cover - pybids is a dependency
        return set()
    return set(Config.load("bids").entities)


def resolve_threads(nthreads: int | None, omp_nthreads: int | None) -> tuple[int, int]:
    """Processes and threads per process, as fMRIPrep: ``nthreads`` defaults to the machine's
    cores, ``omp_nthreads`` to ``min(nthreads - 1, 8)`` (at least 1)."""
    n = int(nthreads or os.cpu_count() or 1)
    omp = int(omp_nthreads) if omp_nthreads else max(1, min(n - 1, 8))
    if n > 1 and omp > n:
        logger.warning(
            "per-process threads (--omp-nthreads=%d) exceed the total (--nthreads=%d)", omp, n
        )
    return n, omp


def _threads(omp_nthreads: int, mem_mb: float | None, *, itk: bool) -> None:
    """Export the per-process thread count (and the memory limit) to the libraries that read them.

    ITK's count is left to ``anat.ants_threads`` (bit-identical registrations) unless
    ``--omp-nthreads`` was given (``itk``).
    """
    env = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS"]
    if itk:
        env.append("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    for var in env:
        os.environ[var] = str(omp_nthreads)
    if mem_mb is not None:
        os.environ["SYMPREP_MEM_MB"] = str(int(mem_mb))
    torch = sys.modules.get("torch")  # only when already imported (importing it costs seconds)
    if torch is not None:
        torch.set_num_threads(omp_nthreads)


def _memory_mb(args: argparse.Namespace) -> float | None:
    mem_mb = getattr(args, "mem_mb", None)
    mem_gb = getattr(args, "mem_gb", None)
    if mem_gb is not None:
        logger.warning("--mem-gb is deprecated: use --mem (MB by default, or e.g. --mem 8GB)")
        if mem_mb is None:
            mem_mb = mem_gb * 1000.0
    return mem_mb


def run(args: argparse.Namespace) -> int:
    """Run the participant or group level; exit status 1 if any subject failed."""
    from pipeline.bids import check_bids_dir, init_derivatives, select_participants
    from pipeline.config import load_config
    from pipeline.workflows.execution import configure_execution

    bids_filters = None
    if getattr(args, "bids_filter_file", None):
        bids_filters = load_bids_filters(args.bids_filter_file)
    mem_mb = _memory_mb(args)
    config = load_config(
        args.config,
        bids_dir=args.bids_dir,
        output_dir=args.output_dir,
        work_dir=args.work_dir,
        participant_label=args.participant_label,
        nprocs=args.nthreads,
        mem_gb=None if mem_mb is None else mem_mb / 1000.0,
        seed=args.seed,
        skip_bids_validation=args.skip_bids_validation,
    )
    if getattr(args, "output_spaces", None):
        from pipeline.anat.options import AnatOptions
        from pipeline.spaces import parse_output_spaces

        space = parse_output_spaces(args.output_spaces, config.anat.resolution)[0]
        config.anat = AnatOptions.model_validate(
            {**config.anat.model_dump(), "template": space.name, "resolution": space.resolution}
        )
    bids_dir = Path(config.bids_dir)
    output_dir = Path(config.output_dir)
    if output_dir.resolve() == bids_dir.resolve():
        raise InputError("OUTPUT_DIR must differ from BIDS_DIR", output_dir)
    work_dir = Path(config.work_dir) if config.work_dir else output_dir.parent / "work"
    from pipeline.io import check_writable_dir

    # folders first: a run that cannot write its results should not start
    check_writable_dir(output_dir, "output folder")
    check_writable_dir(work_dir, "work folder")
    nprocs, omp = resolve_threads(config.nprocs, getattr(args, "omp_nthreads", None))
    memory_gb = config.mem_gb
    itk = bool(getattr(args, "omp_nthreads", None)) or config.anat.ants_threads is None
    _threads(omp, None if memory_gb is None else memory_gb * 1000.0, itk=itk)
    configure_execution(
        memory_gb=memory_gb,
        omp_nthreads=omp,
        stop_on_first_crash=bool(getattr(args, "stop_on_first_crash", False)),
        low_mem=bool(getattr(args, "low_mem", False)),
        bids_filters=bids_filters,
        boilerplate_only=bool(getattr(args, "boilerplate_only", False)),
    )
    layout = check_bids_dir(bids_dir, validate=not config.skip_bids_validation)
    subjects = select_participants(layout, config.participant_label)
    init_derivatives(output_dir, bids_dir, {"seed": config.seed})
    _save_run_config(output_dir, config, args.analysis_level)
    if args.analysis_level == "participant":
        citation = _write_citation(output_dir, config)
        if getattr(args, "boilerplate_only", False):
            print(f"symprep: methods boilerplate written to {citation}")
            return 0
    logger.info(
        "%d processes, %d threads each, memory limit %s",
        nprocs,
        omp,
        "none" if memory_gb is None else f"{memory_gb:g} GB",
    )

    if args.analysis_level == "participant":
        from pipeline.memory import memory_limit
        from pipeline.workflows.participant import run_participants

        with memory_limit(None if memory_gb is None else memory_gb * 1000.0):
            results = run_participants(layout, subjects, output_dir, work_dir, config, nprocs)
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"symprep: sub-{r.subject} failed ({r.stage}): {r.error}")
        logger.info("%d of %d participants done", len(results) - len(failed), len(results))
        return 1 if failed else 0

    from pipeline.group import run_group

    return run_group(bids_dir, output_dir, subjects, config)
