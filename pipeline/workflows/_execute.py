"""Run a Nipype workflow the way every symprep stage does: cached work dir, text crash files,
MultiProc when more than one core is given, and a one-line :class:`StageError` on failure."""

from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from pipeline.errors import StageError


def run_workflow(wf: pe.Workflow, *, work_dir: Path, nprocs: int, what: str) -> None:
    """Run ``wf`` (crash files in ``work_dir/crash``); ``what`` names it in the error message,
    e.g. ``"sub-01: anatomical workflow"``."""
    crash_dir = Path(work_dir) / "crash"
    wf.config["execution"] = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": "true",
        "remove_unnecessary_outputs": "false",
        "hash_method": "content",
    }
    plugin, args = ("MultiProc", {"n_procs": nprocs}) if nprocs > 1 else ("Linear", {})
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:
        raise StageError(
            f"{what} failed ({' '.join(str(exc).split())[:200]}); crash files in {crash_dir}"
        ) from exc
