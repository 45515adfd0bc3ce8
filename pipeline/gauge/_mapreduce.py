"""ComBat as a map-reduce over blocks of subjects × features, on dask.

Why we wrote our own: the ComBat packages (neuroCombat, neuroHarmonize) hold the whole
``features × subjects`` matrix in one process, and :class:`~pipeline.gauge.ComBat` streams
feature blocks but still reads every subject of a block at once, in one process. Here:

1. **map**: one task per block of ``(subjects, features)`` reads the block itself (from an
   ``.npy``/memmap file by name, from subjects' NIfTI maps, from a dask or numpy array) and reduces
   it to per-site sufficient statistics (:class:`~pipeline.gauge._moments.SiteMoments`);
2. **reduce**: a binary tree merges the statistics over blocks of subjects (Chan's update, still
   centred), and the feature block's fit follows on the worker
   (:func:`~pipeline.gauge._moments.standardize`, :class:`~pipeline.gauge._blockfit.BlockFit`:
   coefficients, pooled variance, L/S estimates); the results stay on the workers;
3. **priors and EB**: the blocks report sums over their features, which the client merges into
   each site's hyperparameters; the blocks then compute their EB posteriors, each site iterated
   as often as the one-block fit would iterate it (its stopping rule is global over features,
   see :mod:`pipeline.gauge._blockfit`); only the non-parametric prior, ``O(p^2)`` and capped at
   a few thousand features, runs on the client over all features;
4. **apply**: one task per block adjusts it and writes it into the output ``.npy`` itself.

A task holds one block (``block_bytes`` of float64, a few copies while it works) and its
statistics. The client never holds a feature block's statistics of all blocks at once: it
computes the covariates' per-site statistics itself (no feature in them), gathers the model's
arrays a few blocks at a time into arrays allocated once (``n_sites × n_features``, the size of
the saved model), and keeps at most a few tasks per worker thread in flight when it applies the
model, so neither the graph nor the results it holds grow with the data. Nothing is per subject
but the site codes and covariates. Time is linear in subjects × features. Blocks run wherever
dask computes: a ``distributed.Client`` passed in (the group stage's local or SLURM cluster,
:mod:`pipeline.dask_cluster`), the active default client, or dask's threaded scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from pipeline.gauge import _eb
from pipeline.gauge._blockfit import BlockFit, EBOptions, adjust, merge_prior_sums
from pipeline.gauge._design import CovariateEncoding, check_batch, site_index, site_levels
from pipeline.gauge._errors import HarmonizationError
from pipeline.gauge._moments import (
    FitHeader,
    Moments,
    add_sites_from_moments,
    block_moments,
    concat_moments,
    fit_header,
    merge_moments,
    standardize,
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
    source: Any, r0: int, r1: int, c0: int, c1: int, design: tuple[np.ndarray, np.ndarray]
) -> Moments:
    codes, C = design[0][r0:r1], design[1][r0:r1]
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
    shift = params["gamma_star"] * np.sqrt(params["var_pooled"])
    inv_scale = 1.0 / np.sqrt(params["delta_star"])
    A = C @ params["beta"]
    A += params["grand_mean"]
    out = np.subtract(Xb, A)
    out -= np.take(shift, codes, axis=0)
    out *= np.take(inv_scale, codes, axis=0)
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


def _active_client(client: Any) -> Any:
    """``client``, else the default ``distributed.Client`` when dask's scheduler is set to it
    (so that block results stay on its workers), else ``None`` (dask's local scheduler)."""
    import dask

    if client is not None:
        return client
    if dask.config.get("scheduler", None) not in ("dask.distributed", "distributed"):
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _persist(tasks: list[Any], client: Any) -> list[Any]:
    """Run dask ``tasks``: futures whose results stay on the workers (with a client), or their
    values, computed here by dask's configured scheduler."""
    import dask

    if client is not None:
        return client.compute(tasks)
    return list(dask.compute(*tasks))


def _call(method: str, handles: list[Any], client: Any, *args: Any) -> list[Any]:
    """``handle.<method>(*args)`` for each handle: where its result lives (a worker) or here."""
    if client is None:
        return [getattr(h, method)(*args) for h in handles]
    return [client.submit(_call_method, h, method, *args, pure=False) for h in handles]


def _call_method(obj: Any, method: str, *args: Any) -> Any:
    return getattr(obj, method)(*args)


def _values(handles: list[Any], client: Any) -> list[Any]:
    return handles if client is None else client.gather(handles)


def _window(client: Any) -> int:
    """Tasks kept in flight from the client: a few per worker thread."""
    if client is None:
        return 16
    return max(8, 4 * sum(client.nthreads().values()))


def _run_windowed(
    fn: Any,
    n_calls: int,
    args: Callable[[int], tuple[Any, ...]],
    client: Any,
    on_result: Callable[[int, Any], None],
) -> None:
    """``on_result(k, fn(*args(k)))`` for ``k < n_calls``, with at most :func:`_window` calls
    submitted at once (so the client never holds every call's arguments or results)."""
    import dask

    window = _window(client)
    if client is None:
        task = dask.delayed(fn, pure=False)
        for k in range(0, n_calls, window):
            stop = min(n_calls, k + window)
            results = dask.compute(*[task(*args(j)) for j in range(k, stop)])
            for j, result in enumerate(results):
                on_result(k + j, result)
        return
    from distributed import as_completed

    index: dict[str, int] = {}
    pending = iter(range(n_calls))

    def start() -> Any:
        k = next(pending, None)
        if k is None:
            return None
        future = client.submit(fn, *args(k), pure=False)
        index[future.key] = k
        return future

    running = as_completed([f for f in (start() for _ in range(window)) if f is not None])
    for future in running:
        on_result(index.pop(future.key), future.result())
        future.release()
        nxt = start()
        if nxt is not None:
            running.add(nxt)


class _Shared:
    """Arrays many tasks read, sent to the workers once (``client.scatter``) and released when
    their last task is done; without a client, the arrays themselves.

    Arrays inside a submitted task's arguments would travel with every task, and distributed
    keeps its recent task graphs (arguments included) for its dashboard: the client's memory
    would grow with the number of tasks.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.held: dict[Any, list[Any]] = {}

    def get(self, key: Any, make: Callable[[], Any], uses: int) -> Any:
        """The shared value of ``key`` (made by ``make`` on first use, for ``uses`` tasks)."""
        if self.client is None:
            return make()
        if key not in self.held:
            self.held[key] = [self.client.scatter([make()], hash=False)[0], uses]
        return self.held[key][0]

    def done(self, key: Any) -> None:
        """One task that used ``key`` is done."""
        entry = self.held.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].release()
                del self.held[key]


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
    source = as_source(X)
    per_block, _ = _moment_tree(source, codes, C, block_bytes)
    return concat_moments(_compute(per_block, client))


def _moment_tree(
    source: Any, codes: np.ndarray, C: np.ndarray, block_bytes: int
) -> tuple[list[Any], list[tuple[int, int]]]:
    """One dask task per feature block giving the block's per-site statistics (a map task per
    block of subjects, merged by a binary tree), and the feature blocks' column ranges."""
    import dask

    n, p = source.shape
    if n == 0 or p == 0:
        raise HarmonizationError(f"X is empty (shape {(n, p)})")
    rows, cols = block_shape(n, p, block_bytes, getattr(source, "whole_rows", False))
    shared = dask.delayed(source, pure=True)
    design = dask.delayed((codes, C), pure=True)
    map_task = dask.delayed(_map_task, pure=True)
    merge = dask.delayed(merge_moments, pure=True)
    per_block = []
    col_edges = _edges(p, cols)
    for c0, c1 in col_edges:
        level = [map_task(shared, r0, r1, c0, c1, design) for r0, r1 in _edges(n, rows)]
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
    return per_block, col_edges


def _block_fit(
    moments: Moments, codes: list[int], header: FitHeader, options: EBOptions
) -> BlockFit:
    """The fit of one feature block from its per-site statistics (on a worker)."""
    std = standardize([moments[c] for c in codes], header)
    return BlockFit(**vars(std), counts=header.counts, ref_level=header.ref_level, options=options)


def _posteriors(
    fits: list[Any], priors: list[Any], client: Any, max_iter: int = _eb.MAX_ITER
) -> list[Any]:
    """The blocks with their parametric EB posteriors, each site iterated as often as the whole
    fit would be (its stopping rule is global over features): the largest count of the blocks
    alone, checked (and, should the changes not shrink monotonically, corrected) against the
    changes of every block run that long."""
    own = _values(_call("own_iterations", fits, client, priors), client)
    counts = [None if pr is None else max(c[i] for c in own) for i, pr in enumerate(priors)]
    while True:
        runs = _call("with_posteriors", fits, client, priors, counts)
        changes = _values(_call("iteration_changes", runs, client), client)
        settled = list(counts)
        for i, k in enumerate(counts):
            if k is None:
                continue
            stop = _eb.stop_count([c[i] for c in changes], max_iter=max_iter)
            settled[i] = stop if stop is not None else min(2 * k, max_iter)
        if settled == counts:
            return runs
        log.info("EB iteration counts %s → %s (block changes not monotone)", counts, settled)
        counts = settled


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
    import dask

    source = as_source(X)
    n, p = source.shape
    labels = check_batch(batch, n)
    sites = site_levels(labels)
    codes = site_index(labels, sites)
    encoding = CovariateEncoding.fit(covariates, n)
    C = encoding.transform(covariates, n)
    model = clone(estimator)
    client = _active_client(client)
    # the covariates' per-site statistics need no feature: the client computes them itself
    cov = block_moments(np.zeros((n, 0)), codes, C)
    keys = list(cov)
    header = fit_header(model, [sites[k] for k in keys], list(cov.values()), encoding, p)
    order = [keys[k] for k in header.order]
    options = EBOptions.of(model)
    # 1. map-reduce to each feature block's statistics, and the block's fit, on the workers
    tree, col_edges = _moment_tree(source, codes, C, block_bytes)
    fit_block = dask.delayed(_block_fit, pure=False)
    fits = _persist([fit_block(t, order, header, options) for t in tree], client)
    # 2. priors: sums over features, block by block
    blocks = _values(_call("prior_sums", fits, client), client)
    if sum(b[0] for b in blocks) == p:
        raise HarmonizationError("X has only constant features: nothing to harmonize")
    priors = merge_prior_sums([b[1] for b in blocks], model.mean_only)
    model.priors_ = [None if pr is None else vars(pr) for pr in priors]
    # 3. EB posteriors block by block (the non-parametric prior needs every feature at once)
    whole = model.eb and not model.parametric
    if options.iterates:
        fits = _posteriors(fits, priors, client)
    elif not whole:
        fits = _call("with_posteriors", fits, client, priors)
    arrays = _gather_model(fits, col_edges, len(order), C.shape[1], whole, client)
    del fits
    model._set_standardization(
        header.counts,
        arrays["beta"],
        arrays["grand_mean"],
        arrays["var_pooled"],
        arrays["constant"],
    )
    model.gamma_hat_, model.delta_hat_ = arrays["gamma_hat"], arrays["delta_hat"]
    if whole:
        model.gamma_star_, model.delta_star_, _ = adjust(
            arrays["gamma_hat"],
            arrays["delta_hat"],
            arrays["mean_s"],
            arrays["ss"],
            arrays["constant"],
            header.counts,
            priors,
            options,
        )
    else:
        model.gamma_star_, model.delta_star_ = arrays["gamma_star"], arrays["delta_star"]
    return model


_MODEL_FIELDS = ("beta", "grand_mean", "var_pooled", "constant", "gamma_hat", "delta_hat")


def _gather_model(
    fits: list[Any],
    col_edges: list[tuple[int, int]],
    n_sites: int,
    n_columns: int,
    whole: bool,
    client: Any,
) -> dict[str, np.ndarray]:
    """The model's per-feature arrays, gathered a few feature blocks at a time into arrays
    allocated once (``mean_s`` and ``ss`` too when ``whole``, else the posteriors)."""
    p = col_edges[-1][1]
    names = _MODEL_FIELDS + (("mean_s", "ss") if whole else ("gamma_star", "delta_star"))
    shapes = {"beta": (n_sites + n_columns, p), "grand_mean": (p,), "var_pooled": (p,)}
    arrays = {name: np.empty(shapes.get(name, (n_sites, p)), dtype=np.float64) for name in names}
    arrays["constant"] = np.empty(p, dtype=bool)
    step = _window(client)
    for k in range(0, len(fits), step):
        parts = _values(_call("fields", fits[k : k + step], client, names), client)
        for (c0, c1), part in zip(col_edges[k : k + step], parts, strict=True):
            for name, value in part.items():
                arrays[name][..., c0:c1] = value
        del parts
    return arrays


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
    client = _active_client(client)
    shared = source if client is None else client.scatter(source, broadcast=False, hash=False)
    col_edges, row_edges = _edges(p, cols), _edges(n, rows)
    where = [(r0, r1, c0, c1) for c0, c1 in col_edges for r0, r1 in row_edges]
    params = _Shared(client)

    def model_slice(c0: int, c1: int) -> dict[str, Any]:
        sl = slice(c0, c1)
        return {
            "beta": model.beta_[n_fit:, sl],
            "grand_mean": model.grand_mean_[sl],
            "var_pooled": model.var_pooled_[sl],
            "gamma_star": model.gamma_star_[:, sl],
            "delta_star": model.delta_star_[:, sl],
            "constant": model.constant_features_[sl],
            "ref_level": model.ref_level_,
        }

    def args(k: int) -> tuple[Any, ...]:
        r0, r1, c0, c1 = where[k]
        block = params.get(c0, lambda: model_slice(c0, c1), len(row_edges))
        return (shared, r0, r1, c0, c1, block, codes[r0:r1], C[r0:r1], target)

    def store(k: int, block: np.ndarray | None) -> None:
        r0, r1, c0, c1 = where[k]
        params.done(c0)
        if block is not None:
            out[r0:r1, c0:c1] = block

    _run_windowed(_apply_task, len(where), args, client, store)
    if target is not None:
        with contextlib.suppress(OSError, ValueError):
            _release(out)
    return out
