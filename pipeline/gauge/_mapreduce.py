"""ComBat as a map-reduce over blocks of subjects × features, on dask.

Why we wrote our own: the ComBat packages (neuroCombat, neuroHarmonize) hold the whole
``features × subjects`` matrix in one process, and :class:`~pipeline.gauge.ComBat` streams
feature blocks but still reads every subject of a block at once, in one process. Here:

1. **map**: one task per block of ``(subjects, features)`` reads the block itself (from an
   ``.npy``/memmap file by name, from subjects' NIfTI maps, from a dask or numpy array) and reduces
   it to per-site sufficient statistics (:class:`~pipeline.gauge._moments.SiteMoments`);
2. **reduce**: a binary tree merges the statistics over blocks of subjects (Chan's update, still
   centred); the client joins the feature blocks;
3. **fit**: the pooled statistics give the coefficients, pooled variance, L/S estimates and the
   empirical-Bayes hyperparameters and posteriors (:func:`~pipeline.gauge._moments.fit_from_moments`,
   the same EB code as the in-memory fit, whose stopping rule is global over features);
4. **apply**: one task per block adjusts it and writes it into the output ``.npy`` itself.

A task holds one block (``block_bytes`` of float64, a few copies while it works) and its
statistics; the client holds the per-site, per-feature statistics and the model (``n_sites ×
n_features``, the size of the saved model), nothing per subject. Time is linear in subjects ×
features. Blocks run wherever dask computes: a ``distributed.Client`` passed in (the group stage's
local or SLURM cluster, :mod:`pipeline.dask_cluster`), the active default client, or dask's
threaded scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from pipeline.gauge._design import CovariateEncoding, check_batch, site_index, site_levels
from pipeline.gauge._errors import HarmonizationError
from pipeline.gauge._moments import (
    Moments,
    add_sites_from_moments,
    block_moments,
    concat_moments,
    fit_from_moments,
    merge_moments,
)
from pipeline.gauge._stream import _release, is_dask

log = logging.getLogger(__name__)

#: default float64 bytes of one block (a task holds a few such arrays while it works)
BLOCK_BYTES = 32 << 20


# ---------------------------------------------------------------------------------- sources
class MemmapSource:
    """Blocks of a memory-mapped 2-D array, reopened by file name in each task (picklable).

    ``rows`` selects (and orders) a subset of the rows without copying the file.
    """

    def __init__(self, arr: np.memmap, rows: np.ndarray | None = None) -> None:
        self.filename = str(arr.filename)
        self.offset = int(arr.offset)
        self.dtype = arr.dtype
        self.file_shape = tuple(int(s) for s in arr.shape)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.intp)
        n = self.file_shape[0] if self.rows is None else int(self.rows.size)
        self.shape = (n, self.file_shape[1])

    def take(self, rows: np.ndarray) -> MemmapSource:
        """The same file restricted to ``rows`` (indices into this source's rows)."""
        rows = np.asarray(rows, dtype=np.intp)
        new = MemmapSource.__new__(MemmapSource)
        new.__dict__.update(self.__dict__)
        new.rows = rows if self.rows is None else self.rows[rows]
        new.shape = (int(rows.size), self.file_shape[1])
        return new

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1``, columns ``c0:c1`` as float64."""
        mm = np.memmap(self.filename, self.dtype, "r", self.offset, self.file_shape)
        sel = slice(r0, r1) if self.rows is None else self.rows[r0:r1]
        out = np.array(mm[sel, c0:c1], dtype=np.float64)
        _release(mm)
        del mm
        return out


class ArraySource:
    """Blocks of an in-memory array or a dask array."""

    def __init__(self, X: Any) -> None:
        self.X = X
        self.shape = tuple(int(s) for s in X.shape)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1``, columns ``c0:c1`` as float64."""
        block = self.X[r0:r1, c0:c1]
        if is_dask(block):
            block = block.compute(scheduler="sync")
        return np.array(block, dtype=np.float64)


def as_source(X: Any) -> Any:
    """A picklable block reader of ``X`` (memmaps are reopened by name in the tasks)."""
    if hasattr(X, "read") and hasattr(X, "shape"):
        return X
    if isinstance(X, np.memmap) and isinstance(X.base, mmap.mmap) and X.flags.c_contiguous:
        return MemmapSource(X)
    if is_dask(X):
        return ArraySource(X)
    return ArraySource(np.asarray(X))


def block_shape(n: int, p: int, block_bytes: int, whole_rows: bool = False) -> tuple[int, int]:
    """``(subjects, features)`` of a block of at most ``block_bytes`` float64 bytes."""
    values = max(1, block_bytes // 8)
    cols = p if whole_rows else int(min(p, max(256, values // max(1, min(n, 2048)))))
    rows = int(min(n, max(1, values // cols)))
    return rows, cols


def _edges(total: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(total, a + step)) for a in range(0, total, step)]


# ---------------------------------------------------------------------------------- tasks
def _map_task(
    source: Any, r0: int, r1: int, c0: int, c1: int, codes: np.ndarray, C: np.ndarray
) -> Moments:
    X = source.read(r0, r1, c0, c1)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.all(np.isfinite(X), axis=0))
        raise HarmonizationError(
            f"X has NaN or Inf values in {bad.size} feature(s) of columns {c0}:{c1} "
            f"(first: column {c0 + int(bad[0])}); impute or mask them first"
        )
    return block_moments(X, codes, C)


def _apply_task(
    source: Any,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
    params: dict[str, np.ndarray],
    codes: np.ndarray,
    C: np.ndarray,
    target: dict[str, Any] | None,
) -> np.ndarray | None:
    Xb = source.read(r0, r1, c0, c1)
    # the in-memory transform's operations, in its order: x* = (x - A - shift) * inv_scale + A
    A = C @ params["beta"]
    A += params["grand_mean"]
    out = np.subtract(Xb, A)
    out -= np.take(params["shift"], codes, axis=0)
    out *= np.take(params["inv_scale"], codes, axis=0)
    out += A
    const = params["constant"]
    if const.any():
        out[:, const] = Xb[:, const]
    ref = params["ref_level"]
    if ref is not None:
        rows = codes == int(ref)
        out[rows] = Xb[rows]
    if target is None:
        return out
    mm = np.memmap(target["filename"], target["dtype"], "r+", target["offset"], target["shape"])
    mm[r0:r1, c0:c1] = out
    mm.flush()
    _release(mm)
    del mm
    return None


def _compute(tasks: list[Any], client: Any) -> list[Any]:
    import dask

    if client is not None:
        futures = client.compute(tasks)
        return client.gather(futures)
    return list(dask.compute(*tasks))


# ---------------------------------------------------------------------------------- reduce
def site_moments(
    X: Any,
    codes: np.ndarray,
    C: np.ndarray,
    block_bytes: int = BLOCK_BYTES,
    client: Any = None,
) -> Moments:
    """Per-site sufficient statistics of ``X`` by map-reduce over blocks.

    Parameters
    ----------
    X : array-like, numpy.memmap, dask array or a source
        (e.g. :class:`pipeline.gauge._voxelwise.NiftiSource`: subjects' NIfTI maps)
        ``(n_subjects, n_features)``.
    codes : ndarray of int, shape (n_subjects,)
        Site code of each row.
    C : ndarray of shape (n_subjects, n_columns)
        Encoded covariates.
    block_bytes : int
        Float64 bytes of one block.
    client : distributed.Client, optional
        Where the blocks run (default: the active dask scheduler).

    Returns
    -------
    dict of int to SiteMoments
    """
    import dask

    source = as_source(X)
    n, p = source.shape
    if n == 0 or p == 0:
        raise HarmonizationError(f"X is empty (shape {(n, p)})")
    rows, cols = block_shape(n, p, block_bytes, getattr(source, "whole_rows", False))
    shared = dask.delayed(source, pure=True)
    map_task = dask.delayed(_map_task, pure=True)
    merge = dask.delayed(merge_moments, pure=True)
    per_block = []
    for c0, c1 in _edges(p, cols):
        level = [
            map_task(shared, r0, r1, c0, c1, codes[r0:r1], C[r0:r1]) for r0, r1 in _edges(n, rows)
        ]
        while len(level) > 1:  # binary tree: log2(subject blocks) merges deep
            level = [
                merge(level[k], level[k + 1]) if k + 1 < len(level) else level[k]
                for k in range(0, len(level), 2)
            ]
        per_block.append(level[0])
    log.info(
        "ComBat map-reduce: %d × %d in blocks of %d × %d (%d tasks)",
        n,
        p,
        rows,
        cols,
        -(-n // rows) * len(per_block),
    )
    return concat_moments(_compute(per_block, client))


# ---------------------------------------------------------------------------------- public API
def fit_mapreduce(
    estimator: Any,
    X: Any,
    batch: Sequence[Any],
    covariates: pd.DataFrame | None = None,
    *,
    block_bytes: int = BLOCK_BYTES,
    client: Any = None,
) -> Any:
    """Fit a :class:`~pipeline.gauge.ComBat` (its parameters; a fitted copy is returned) by
    map-reduce over blocks of ``X``; same model as ``estimator.fit(X, batch, covariates)``.

    Parameters
    ----------
    estimator : ComBat
        Unfitted; cloned, so it is left as it is.
    X : array-like, numpy.memmap, dask array or a source
        ``(n_subjects, n_features)``, no NaN/Inf.
    batch : sequence of length n_subjects
    covariates : DataFrame, optional
    block_bytes : int, default=32 MB
    client : distributed.Client, optional

    Returns
    -------
    ComBat
        Fitted (``save``, ``transform`` and :func:`transform_mapreduce` apply it).
    """
    source = as_source(X)
    n = source.shape[0]
    labels = check_batch(batch, n)
    sites = site_levels(labels)
    codes = site_index(labels, sites)
    encoding = CovariateEncoding.fit(covariates, n)
    C = encoding.transform(covariates, n)
    moments = site_moments(source, codes, C, block_bytes, client)
    model = clone(estimator)
    return fit_from_moments(model, [sites[k] for k in moments], list(moments.values()), encoding)


def add_sites_mapreduce(
    model: Any,
    X: Any,
    batch: Sequence[Any],
    covariates: pd.DataFrame | None = None,
    priors: str = "frozen",
    *,
    block_bytes: int = BLOCK_BYTES,
    client: Any = None,
) -> Any:
    """:meth:`ComBat.add_sites` by map-reduce (``X`` holds subjects of unseen sites only)."""
    check_is_fitted(model, "gamma_star_")
    source = as_source(X)
    labels = check_batch(batch, source.shape[0])
    if source.shape[1] != model.n_features_in_:
        raise HarmonizationError(
            f"X has {source.shape[1]} features but ComBat was fitted with {model.n_features_in_}"
        )
    sites = site_levels(labels)
    codes = site_index(labels, sites)
    C = model.encoding_.transform(covariates, source.shape[0])
    moments = site_moments(source, codes, C, block_bytes, client)
    return add_sites_from_moments(
        model, [sites[k] for k in moments], list(moments.values()), priors
    )


def transform_mapreduce(
    model: Any,
    X: Any,
    batch: Sequence[Any],
    covariates: pd.DataFrame | None = None,
    *,
    out: np.ndarray | None = None,
    block_bytes: int = BLOCK_BYTES,
    client: Any = None,
) -> np.ndarray:
    """Apply a fitted ComBat block by block; each task writes its block into ``out``.

    Parameters
    ----------
    model : ComBat
        Fitted (by any path: in memory, map-reduce, distributed).
    X, batch, covariates
        As in :meth:`ComBat.transform`.
    out : numpy.memmap or ndarray, optional
        A writable memmap (file-backed, C-order) is written by the tasks themselves; an ndarray
        is filled by the client; default a new in-memory float64 array.
    block_bytes : int, default=32 MB
    client : distributed.Client, optional

    Returns
    -------
    ndarray
        ``out``.
    """
    import dask

    check_is_fitted(model, "gamma_star_")
    source = as_source(X)
    n, p = source.shape
    if p != model.n_features_in_:
        raise HarmonizationError(
            f"X has {p} features but ComBat was fitted with {model.n_features_in_}"
        )
    codes = site_index(check_batch(batch, n), model.sites_)
    n_fit = len(model.sites_) - model._n_added
    C = model.encoding_.transform(covariates, n)
    if out is None:
        out = np.empty((n, p))
    if tuple(out.shape) != (n, p):
        raise HarmonizationError(f"out has shape {tuple(out.shape)}, expected {(n, p)}")
    target = None
    if isinstance(out, np.memmap) and isinstance(out.base, mmap.mmap) and out.flags.c_contiguous:
        out.flush()
        target = {
            "filename": str(out.filename),
            "dtype": out.dtype,
            "offset": int(out.offset),
            "shape": tuple(out.shape),
        }
    rows, cols = block_shape(n, p, block_bytes, getattr(source, "whole_rows", False))
    shared = dask.delayed(source, pure=True)
    apply_task = dask.delayed(_apply_task, pure=True)
    tasks, where = [], []
    for c0, c1 in _edges(p, cols):
        sl = slice(c0, c1)
        params = dask.delayed(
            {
                "beta": model.beta_[n_fit:, sl],
                "grand_mean": model.grand_mean_[sl],
                "shift": model.gamma_star_[:, sl] * np.sqrt(model.var_pooled_[sl]),
                "inv_scale": 1.0 / np.sqrt(model.delta_star_[:, sl]),
                "constant": model.constant_features_[sl],
                "ref_level": model.ref_level_,
            },
            pure=True,
        )
        for r0, r1 in _edges(n, rows):
            tasks.append(apply_task(shared, r0, r1, c0, c1, params, codes[r0:r1], C[r0:r1], target))
            where.append((r0, r1, c0, c1))
    if target is not None:
        _compute(tasks, client)
        with contextlib.suppress(OSError, ValueError):
            _release(out)
        return out
    step = 16  # blocks in flight: the client holds at most these results at once
    for k in range(0, len(tasks), step):
        blocks = _compute(tasks[k : k + step], client)
        for (r0, r1, c0, c1), block in zip(where[k : k + step], blocks, strict=True):
            out[r0:r1, c0:c1] = block
    return out
