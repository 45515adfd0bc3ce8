"""The ``--mem`` limit enforced: a subject that needs more fails with a clear message instead of
being killed by the kernel's OOM killer mid-write.

Nipype's MultiProc plugin only *schedules* nodes by their declared memory; nothing stops a node
from using more. symprep therefore sets the process's ``RLIMIT_DATA`` (heap and private
anonymous mappings, which is where image arrays live; inherited by Nipype's worker processes) to
the ``--mem`` value (beyond what the loaded libraries already hold), so an allocation beyond it
raises :class:`MemoryError` in the node that made
it. The participant runner turns that into :class:`OutOfMemoryError`, records the subject as
failed (no partial outputs: every derivative is written atomically) and goes on with the next.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import SymprepError

logger = logging.getLogger(__name__)

#: the limit applied by :func:`apply_memory_limit` (MB), for messages
_LIMIT_MB: list[float] = []


class OutOfMemoryError(SymprepError):
    """A subject needed more memory than ``--mem`` allows."""

    exit_code = 1


def current_data_mb() -> float:
    """The process's data segment size now (``VmData``, MB): what ``RLIMIT_DATA`` counts."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0.0


@contextmanager
def memory_limit(mem_mb: float | None) -> Iterator[None]:
    """Within the block, cap this process (and the children it starts) at ``mem_mb`` MB of data
    memory beyond what it already uses; the previous limit comes back afterwards.

    The libraries symprep has loaded (ANTs, torch, Nipype) are not counted: the limit is the
    budget of the subjects' processing, as ``--mem`` is Nipype's scheduling budget.
    ``None`` sets no limit.
    """
    if mem_mb is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = int((current_data_mb() + mem_mb) * 1024 * 1024)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    _LIMIT_MB[:] = [mem_mb]
    logger.info("memory limit: %g MB of data per process (RLIMIT_DATA)", mem_mb)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        _LIMIT_MB.clear()


def out_of_memory_message(where: str, detail: str = "") -> str:
    """One line for a subject that ran out of memory in ``where`` (e.g. ``"the anat stage"``)."""
    limit = f" under the --mem limit of {_LIMIT_MB[0]:g} MB" if _LIMIT_MB else ""
    extra = f" ({detail})" if detail else ""
    return f"ran out of memory{limit} in {where}{extra}: raise --mem, or use --low-mem"
