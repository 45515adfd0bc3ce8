"""Run a Nipype workflow the way every symprep stage does: cached work dir, text crash files,
MultiProc when more than one core is given (with the run's memory limit), and a one-line
:class:`StageError` on failure.

The run-time settings of the command line (``--mem``, ``--omp-nthreads``, ``--stop-on-first-crash``,
``--low-mem``, ``--bids-filter-file``, ``--boilerplate-only``) are not part of the YAML
configuration; :func:`configure_execution` records them once per process, as fMRIPrep's
``config.nipype`` section does, and the participant run reads them from :data:`EXECUTION`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nipype.pipeline import engine as pe

from pipeline.errors import StageError


@dataclass
class ExecutionSettings:
    """How this process runs its Nipype workflows.

    Attributes
    ----------
    memory_gb : float or None
        Memory limit of one subject's workflow (Nipype MultiProc's ``memory_gb``); None: Nipype's
        default (90% of the machine's memory).
    omp_nthreads : int or None
        Threads per process (OpenMP, BLAS, ITK, torch).
    stop_on_first_crash : bool
        Stop a workflow at its first failing node (Nipype's ``stop_on_first_crash``); otherwise
        the nodes that do not depend on it still run, and the stage fails at the end.
    low_mem : bool
        Trade disk for memory where a stage can.
    bids_filters : dict or None
        pybids filters per input kind (``--bids-filter-file``), e.g. ``{"bold": {"session": "1"}}``.
    boilerplate_only : bool
        Write the methods boilerplate and stop.
    """

    memory_gb: float | None = None
    omp_nthreads: int | None = None
    stop_on_first_crash: bool = False
    low_mem: bool = False
    bids_filters: dict[str, dict[str, Any]] | None = None
    boilerplate_only: bool = False
    extra_plugin_args: dict[str, Any] = field(default_factory=dict)


#: the settings of this process (set by the command line through :func:`configure_execution`)
EXECUTION = ExecutionSettings()


def configure_execution(**settings: Any) -> ExecutionSettings:
    """Set fields of :data:`EXECUTION` (unknown names raise ``TypeError``); return it."""
    names = {f.name for f in dataclasses.fields(ExecutionSettings)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown execution settings: {unknown}")
    for key, value in settings.items():
        setattr(EXECUTION, key, value)
    return EXECUTION


def plugin_settings(nprocs: int, settings: ExecutionSettings | None = None) -> tuple[str, dict]:
    """Nipype plugin and its arguments: MultiProc with ``n_procs`` and ``memory_gb`` when more
    than one process is given, Linear otherwise or with ``--low-mem`` (one process cannot exceed
    a limit by running nodes side by side)."""
    settings = EXECUTION if settings is None else settings
    if nprocs <= 1 or settings.low_mem:  # --low-mem: one node at a time, the smallest peak
        return "Linear", {}
    args: dict[str, Any] = {"n_procs": int(nprocs), "raise_insufficient": False}
    if settings.memory_gb is not None:
        args["memory_gb"] = float(settings.memory_gb)
    args.update(settings.extra_plugin_args)
    return "MultiProc", args


def _crash_summary(crash_dir: Path, since: float) -> str | None:
    """``node: last line of its traceback`` of the first crash file written since ``since``."""
    try:
        files = sorted(
            (p for p in crash_dir.glob("crash-*.txt") if p.stat().st_mtime >= since),
            key=lambda p: p.stat().st_mtime,
        )
    except OSError:
        return None
    for path in files:
        try:
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        except OSError:
            continue
        node = next((line[5:].strip() for line in lines if line.startswith("Node:")), "?")
        last = next((line for line in reversed(lines) if line), "")
        return f"node {node}: {last}"
    return None


def run_workflow(wf: pe.Workflow, *, work_dir: Path, nprocs: int, what: str) -> None:
    """Run ``wf`` (crash files in ``work_dir/crash``); ``what`` names it in the error message,
    e.g. ``"sub-01: anatomical workflow"``."""
    crash_dir = Path(work_dir) / "crash"
    wf.config["execution"] = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": "true" if EXECUTION.stop_on_first_crash else "false",
        "remove_unnecessary_outputs": "false",
        "hash_method": "content",
        # MultiProc polls every 2 s by default: on a chain of small nodes that is most of the run
        "poll_sleep_duration": "0.05",
    }
    plugin, args = plugin_settings(nprocs)
    start = time.time() - 1.0
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:
        detail = _crash_summary(crash_dir, start) or " ".join(str(exc).split())
        if "MemoryError" in detail or "bad_alloc" in detail:
            from pipeline.memory import OutOfMemoryError, out_of_memory_message

            node = detail.split(":")[0]
            raise OutOfMemoryError(out_of_memory_message(f"the {what}", node)) from exc
        raise StageError(
            f"{what} failed ({' '.join(detail.split())[:300]}); crash files in {crash_dir}"
        ) from exc
