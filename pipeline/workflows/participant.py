"""Run the participant-level stages for one subject, recording success or failure.

One subject's failure never costs the others: :func:`run_participants` catches each subject's
error, writes ``OUTPUT_DIR/logs/sub-X_failure.json`` (stage, error, traceback for bugs) and goes
on; the command line exits non-zero at the end. A success writes ``logs/sub-X_participant.json``
with the outputs and timings (the Snakemake rule's target).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import __version__
from pipeline.bids import t1w_file
from pipeline.config import Config
from pipeline.errors import SymprepError
from pipeline.io import check_image, check_writable_dir, read_json, remove_stale_parts, write_json
from pipeline.outputs import failure_path, status_path

logger = logging.getLogger(__name__)


@dataclass
class SubjectResult:
    """Outcome of one subject's participant stages."""

    subject: str
    ok: bool
    outputs: dict[str, str] = field(default_factory=dict)
    stage: str | None = None
    error: str | None = None
    seconds: float = 0.0


class _NoTracebacks(logging.Filter):
    """Cut the traceback out of Nipype's crash messages: the subject's failure record and the
    crash file keep it; the terminal gets one line (``-vv`` shows everything)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cut = message.find("Traceback (most recent call last)")
        if cut >= 0:
            record.msg = " ".join(message[:cut].split()) + " (traceback in the crash file)"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


_TRACEBACK_FILTER = _NoTracebacks()


def _tame_nipype_logging() -> None:
    """Nipype logs through its own handlers: stop its records reaching ours twice, and follow our
    verbosity: WARNING by default, INFO with ``-v`` (the root logger below INFO), DEBUG with
    ``-vv``. Nipype's own configuration gets the same levels, so a worker that re-reads it agrees.
    """
    import nipype

    root = logging.getLogger().getEffectiveLevel()
    if root >= logging.INFO:
        level = logging.WARNING
    elif root > logging.DEBUG:
        level = logging.INFO
    else:
        level = logging.DEBUG
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip"):
        log = logging.getLogger(name)
        log.propagate = False
        log.setLevel(level)
        if level > logging.DEBUG:
            log.addFilter(_TRACEBACK_FILTER)
        else:
            log.removeFilter(_TRACEBACK_FILTER)
    name = logging.getLevelName(level)
    for option in ("workflow_level", "interface_level", "utils_level"):
        nipype.config.set("logging", option, name)


def _fix_itk_threads(config: Config) -> None:
    """Give every ITK filter of this process (N4, coregistration, resampling) a fixed thread count.

    ITK sums metric and B-spline fits per thread, so the last bits of its results depend on the
    thread count, which otherwise follows the machine (or the SLURM allocation). ITK reads
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when the first filter runs; a value the user
    exported wins.
    """
    threads = config.anat.ants_threads
    if threads is not None:
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(int(threads)))


def run_participant(
    layout, subject: str, output_dir: Path, work_dir: Path, config: Config, nprocs: int
) -> SubjectResult:
    """Run the enabled participant stages of one subject; never raises for that subject's errors."""
    start = time.monotonic()
    _tame_nipype_logging()
    _fix_itk_threads(config)
    # a job killed mid-write (SIGKILL, node failure) leaves hidden temporaries: clear this subject's
    remove_stale_parts(Path(output_dir) / f"sub-{subject}")
    for shared in (Path(output_dir), Path(output_dir) / "logs"):  # the report, the logs
        for sep in "._":
            remove_stale_parts(shared, prefix=f"sub-{subject}{sep}", recursive=False)
    stage = "inputs"
    outputs: dict[str, str] = {}
    try:
        from pipeline.workflows.execution import EXECUTION
        from pipeline.workflows.stages import INPUT_CHECKS, STAGES, StageContext

        filters = EXECUTION.bids_filters or {}
        t1w = t1w_file(layout, subject, filters.get("t1w"))
        logger.info("sub-%s: anatomical reference %s", subject, t1w.name)
        check_image(t1w, ndim=3)
        context = StageContext(
            layout, subject, Path(output_dir), Path(work_dir), config, nprocs, filters, t1w=t1w
        )
        enabled = [
            s
            for s in STAGES.values()
            if s.enabled(config) and all(STAGES[r].enabled(config) for r in s.requires)
        ]
        for item in enabled:  # every input checked before any work
            if item.name in INPUT_CHECKS:
                INPUT_CHECKS[item.name](context)
        for item in enabled:
            stage = item.name
            logger.info("sub-%s: %s stage", subject, stage)
            result = item.run(context)
            context.results[stage] = result
            outputs.update({f"{stage}.{k}": str(v) for k, v in result.items()})
    except SymprepError as exc:
        return _failed(output_dir, subject, stage, str(exc), None, start)
    except MemoryError:
        from pipeline.memory import out_of_memory_message

        return _failed(
            output_dir, subject, stage, out_of_memory_message(f"the {stage} stage"), None, start
        )
    except Exception as exc:  # a bug: record it with its traceback, go on with other subjects
        return _failed(
            output_dir,
            subject,
            stage,
            f"{type(exc).__name__}: {exc}",
            traceback.format_exc(),
            start,
        )
    seconds = time.monotonic() - start
    failure_path(output_dir, subject).unlink(missing_ok=True)
    write_json(
        status_path(output_dir, subject),
        {
            "subject": f"sub-{subject}",
            "status": "ok",
            "symprep_version": __version__,
            "seed": config.seed,
            "seconds": round(seconds, 1),
            "qc_flags": _qc_flags(outputs),
            "outputs": outputs,
        },
    )
    logger.info("sub-%s: participant stages done in %.0f s", subject, seconds)
    return SubjectResult(subject, True, outputs, seconds=seconds)


def _qc_flags(outputs: dict[str, str]) -> list[str]:
    """Problems that did not fail the subject but must be seen (e.g. an Atropos failure)."""
    qc = outputs.get("anat.qc_json")
    if not qc or not Path(qc).exists():
        return []
    return list(read_json(qc).get("flags", []))


def _failed(
    output_dir: Path, subject: str, stage: str, message: str, tb: str | None, start: float
) -> SubjectResult:
    seconds = time.monotonic() - start
    status_path(output_dir, subject).unlink(missing_ok=True)
    record = {
        "subject": f"sub-{subject}",
        "status": "failed",
        "stage": stage,
        "error": message,
        "symprep_version": __version__,
        "seconds": round(seconds, 1),
    }
    if tb:
        record["traceback"] = tb
    write_json(failure_path(output_dir, subject), record)
    logger.error("sub-%s failed in stage %s: %s", subject, stage, message)
    return SubjectResult(subject, False, stage=stage, error=message, seconds=seconds)


def build_report(output_dir: Path, subject: str, bids_dir: Path | None) -> Path | None:
    """Write ``OUTPUT_DIR/sub-X.html``; a report problem is logged, never fatal for the subject."""
    from pipeline.reports import build_subject_report

    try:
        return build_subject_report(output_dir, subject, bids_dir=bids_dir)
    except Exception as exc:  # noqa: BLE001 - the derivatives matter more than their report
        logger.warning("sub-%s: report not written (%s: %s)", subject, type(exc).__name__, exc)
        return None


def run_participants(
    layout, subjects: list[str], output_dir: Path, work_dir: Path, config: Config, nprocs: int
) -> list[SubjectResult]:
    """Run every subject in turn (a progress bar when there are several)."""
    from tqdm.auto import tqdm

    check_writable_dir(work_dir, "work folder")  # before any subject's work
    results = []
    for subject in tqdm(subjects, desc="participants", unit="subject", disable=len(subjects) < 2):
        results.append(run_participant(layout, subject, output_dir, work_dir, config, nprocs))
        build_report(output_dir, subject, Path(layout.root))
    return results
