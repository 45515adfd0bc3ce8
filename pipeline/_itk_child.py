"""Run a function in a fresh interpreter with a fixed ITK thread count.

ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process and splits its metric sums
over a thread pool whose work division follows the load, so the last bits of a registration
depend on the thread count and on what else runs on the machine. antspyx exposes no per-call
thread setting, so a registration that must be bit-identical for a given seed runs in a child
process started with the variable set (the anatomical registration does the same,
:func:`pipeline.anat.registration.register_to_template`). A subprocess rather than
multiprocessing: it works the same under Nipype's MultiProc workers and from scripts without a
``__main__`` guard. Arguments and result travel as pickles.

Usage inside symprep: ``call_with_itk_threads(1, "pipeline.func.coreg:coregister", *args)``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def call_with_itk_threads(
    threads: int, target: str, *args: Any, forward: str | None = None, **kwargs: Any
) -> Any:
    """Call ``target`` (``"module:function"``) in a child process with ``threads`` ITK threads.

    ``forward``: the child's log lines that contain this text are logged here (INFO).

    Raises
    ------
    RuntimeError
        When the child fails; the message carries the last lines of its error output.
    """
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(int(threads)))
    with tempfile.TemporaryDirectory(prefix="symprep-itk-") as tmp:
        job, res = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((target, args, kwargs)))
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline._itk_child", str(job), str(res)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not res.exists():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise RuntimeError(
                f"{target} failed in its child process (exit {proc.returncode}): {tail}"
            )
        return pickle.loads(res.read_bytes())


def _main(job: str, result: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    target, args, kwargs = pickle.loads(Path(job).read_bytes())
    module, name = target.split(":")
    value = getattr(importlib.import_module(module), name)(*args, **kwargs)
    Path(result).write_bytes(pickle.dumps(value))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
