"""Feature-block access to ``(n_subjects, n_features)`` arrays held in memory, on disk or in dask.

ComBat's statistics are per feature, except for the EB hyperparameters, which need only
per-feature summaries. So the data are read one block of features at a time (all subjects of
the block, ``n_subjects × block`` values): the peak memory is a few blocks plus ``O(n_features)``
summaries, whatever the number of features.

* ``numpy.ndarray``: sliced.
* ``numpy.memmap``: sliced, then the mapped pages are released (``madvise(MADV_DONTNEED)``), so
  the resident set does not grow to the file size as the blocks are read.
* ``dask.array.Array``: each block is computed on its own (dask reads the subject chunks it
  needs). Chunk such arrays as ``(many subjects, a few thousand features)``; row-only chunks make
  every block re-read every chunk.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipeline.gauge._errors import HarmonizationError

try:  # dask is a dependency, but keep the numpy path importable without it
    import dask.array as da
except ImportError:  # pragma: no cover
    da = None

#: default memory budget of one ``n_subjects × block`` float64 array
BLOCK_BYTES = 32 << 20


def is_dask(X: Any) -> bool:
    """Whether ``X`` is a dask array."""
    return da is not None and isinstance(X, da.Array)


def _release(arr: Any) -> None:
    """Drop the resident pages of a memory-mapped array (the data stay in the page cache)."""
    mm = getattr(arr, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED)


class FeatureBlocks:
    """Read an ``(n_subjects, n_features)`` array one block of features at a time.

    Parameters
    ----------
    X : array-like, numpy.memmap or dask array
        The data; lists and DataFrames are converted with :func:`numpy.asarray`.
    block_features : int, optional
        Features per block; by default as many as fit in :data:`BLOCK_BYTES` (float64).
    name : str, default="X"
        The parameter name used in error messages.
    """

    def __init__(self, X: Any, block_features: int | None = None, name: str = "X") -> None:
        if not (is_dask(X) or isinstance(X, np.ndarray)):
            X = np.asarray(X)
        if X.ndim != 2:
            raise HarmonizationError(
                f"{name} must be 2-D (n_subjects, n_features), got shape {tuple(X.shape)}"
            )
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise HarmonizationError(f"{name} must hold real numbers, got dtype {X.dtype}")
        self.X = X
        self.name = name
        self.n_subjects, self.n_features = (int(s) for s in X.shape)
        if self.n_subjects == 0 or self.n_features == 0:
            raise HarmonizationError(f"{name} is empty (shape {tuple(X.shape)})")
        if block_features is None:
            block_features = max(1, BLOCK_BYTES // (8 * self.n_subjects))
        self.block_features = int(min(block_features, self.n_features))

    def bounds(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each feature block."""
        for start in range(0, self.n_features, self.block_features):
            yield start, min(self.n_features, start + self.block_features)

    @property
    def n_blocks(self) -> int:
        """Number of feature blocks."""
        return -(-self.n_features // self.block_features)

    def read(
        self,
        start: int,
        stop: int,
        rows: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Features ``start:stop`` of ``rows`` (default all) as float64, checked for NaN/Inf.

        ``out`` (float64, the block's shape) receives the values instead of a new array.
        """
        if is_dask(self.X):
            block = self.X[:, start:stop]
            if rows is not None:
                block = block[rows]
            values = block.compute()
        else:
            values = self.X[:, start:stop] if rows is None else self.X[rows, start:stop]
        if out is None:
            out = np.array(values, dtype=np.float64)  # always a copy
        else:
            np.copyto(out, values, casting="unsafe")
        del values
        if not is_dask(self.X):
            _release(self.X)
        if not np.isfinite(out).all():
            bad = np.where(~np.all(np.isfinite(out), axis=0))[0]
            raise HarmonizationError(
                f"{self.name} has NaN or Inf values in {bad.size} feature(s) of columns "
                f"{start}:{stop} (first: column {start + int(bad[0])}); impute or mask them first"
            )
        return out


class Workspace:
    """Reusable ``(n_rows, width)`` float64 buffers (fresh large arrays cost page faults).

    ``get(name, c)`` returns a C-contiguous ``(n_rows, c)`` view of buffer ``name``, ``c <= width``.
    """

    def __init__(self, n_rows: int, width: int) -> None:
        self.n_rows, self.width = n_rows, width
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, c: int) -> np.ndarray:
        """A contiguous ``(n_rows, c)`` float64 view of the buffer called ``name``."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = np.empty(self.n_rows * self.width)
        return buf[: self.n_rows * c].reshape(self.n_rows, c)


def map_feature_blocks(
    source: FeatureBlocks,
    func: Callable[..., np.ndarray],
    out: np.ndarray | None = None,
    progress: Callable[[Iterator[Any]], Iterator[Any]] | None = None,
) -> Any:
    """Apply ``func(block, start, stop, rows, workspace)`` (same shape out) to every block.

    ``workspace`` is a :class:`Workspace` to draw scratch buffers from, or ``None`` (allocate).

    A dask input gives a lazy dask array (``func`` is applied to each dask chunk, so
    subjects are streamed as well); other inputs are computed into ``out`` (allocated in memory
    when not given; pass a writable ``numpy.memmap`` to keep the result on disk).
    """
    X = source.X
    if is_dask(X) and out is None:

        def _chunk(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
            (r0, r1), (c0, c1) = block_info[0]["array-location"]
            values = np.asarray(block, dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise HarmonizationError(
                    f"{source.name} has NaN or Inf values in columns {c0}:{c1}"
                )
            return func(values, c0, c1, np.arange(r0, r1), None)

        return X.map_blocks(_chunk, dtype=np.float64)
    if out is None:
        out = np.empty((source.n_subjects, source.n_features), dtype=np.float64)
    elif out.shape != (source.n_subjects, source.n_features):
        raise HarmonizationError(
            f"out has shape {out.shape}, expected {(source.n_subjects, source.n_features)}"
        )
    bounds = source.bounds()
    if progress is not None:
        bounds = progress(bounds)
    rows = np.arange(source.n_subjects)
    ws = Workspace(source.n_subjects, source.block_features)
    for start, stop in bounds:
        block = source.read(start, stop, out=ws.get("input", stop - start))
        out[:, start:stop] = func(block, start, stop, rows, ws)
        _release(out)  # dirty pages stay in the page cache; only the mapping is dropped
    if isinstance(out, np.memmap):
        out.flush()
    return out
