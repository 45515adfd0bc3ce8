"""Map-reduce ComBat on dask: equal to the in-memory fit, blocks read from files, flat memory."""

from __future__ import annotations

import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest

from pipeline.gauge import ComBat
from pipeline.gauge._mapreduce import (
    add_sites_mapreduce,
    fit_mapreduce,
    site_moments,
    transform_mapreduce,
)

VARIANTS = [
    {},
    {"ref_batch": "site1"},
    {"parametric": False},
    {"parametric": False, "ref_batch": "site2"},
    {"mean_only": True},
    {"eb": False},
]
SMALL_BLOCKS = 8 * 9 * 256  # 9 subjects × 256 features: many blocks of both kinds


def _npy(path, X, dtype=np.float64):
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_equals_in_memory(kw, make_data):
    X, site, cov = make_data(5, n_features=700)
    cov = cov[["sex", "handedness", "age"]]
    expected = ComBat(**kw).fit(X, site, cov)
    model = fit_mapreduce(ComBat(**kw), X, site, cov, block_bytes=SMALL_BLOCKS)
    got = transform_mapreduce(model, X, site, cov, block_bytes=SMALL_BLOCKS)
    assert np.abs(got - expected.transform(X, site, cov)).max() <= 1e-6
    assert np.abs(model.gamma_star_ - expected.gamma_star_).max() <= 1e-6
    for ours, theirs in zip(model.priors_, expected.priors_, strict=True):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert ours == pytest.approx(theirs, rel=1e-9, nan_ok=True)
    if "ref_batch" in kw:
        ref = site == kw["ref_batch"]
        np.testing.assert_array_equal(got[ref], X[ref])


def test_unseen_sites_and_files(make_data, tmp_path):
    X, site, cov = make_data(6, n_features=600)
    cov = cov[["sex", "age"]]
    train = site != "site3"
    ctr, cnew = cov[train].reset_index(drop=True), cov[~train].reset_index(drop=True)
    raw = _npy(tmp_path / "raw.npy", X, np.float32)
    X32 = np.asarray(raw, dtype=np.float64)
    expected = ComBat().fit(X32[train], site[train], ctr)
    expected.add_sites(X32[~train], site[~train], cnew)
    lazy = da.from_array(X32, chunks=(20, 100))[np.flatnonzero(train)]
    model = fit_mapreduce(ComBat(), lazy, site[train], ctr, block_bytes=SMALL_BLOCKS)
    add_sites_mapreduce(model, X32[~train], site[~train], cnew, block_bytes=SMALL_BLOCKS)
    out = np.lib.format.open_memmap(
        tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=X.shape
    )
    transform_mapreduce(model, raw, site, cov, out=out, block_bytes=SMALL_BLOCKS)
    got = np.load(tmp_path / "out.npy")
    want = expected.transform(X32, site, cov).astype(np.float32)
    assert np.abs(got.astype(np.float64) - want).max() <= 1e-4  # float32 output rounding
    assert model.sites_ == expected.sites_


def test_on_a_local_dask_cluster(make_data, tmp_path):
    """Worker processes reopen the memmaps by name and write their blocks themselves."""
    from distributed import Client, LocalCluster

    X, site, cov = make_data(7, n_features=300)
    cov = cov[["sex", "age"]]
    raw = _npy(tmp_path / "raw.npy", X)
    out = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float64, shape=X.shape)
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        model = fit_mapreduce(ComBat(), raw, site, cov, block_bytes=SMALL_BLOCKS, client=client)
        transform_mapreduce(model, raw, site, cov, out=out, block_bytes=SMALL_BLOCKS, client=client)
        # the default client is found without being passed (block results stay on its workers)
        again = fit_mapreduce(ComBat(), raw, site, cov, block_bytes=SMALL_BLOCKS)
    expected = ComBat().fit_transform(X, site, cov)
    assert np.abs(np.load(tmp_path / "o.npy") - expected).max() <= 1e-6
    np.testing.assert_array_equal(again.gamma_star_, model.gamma_star_)


def _peak_bytes(path, site: np.ndarray, block: int) -> int:
    src = np.load(path, mmap_mode="r")
    tracemalloc.start()
    with dask.config.set(scheduler="sync"):
        model = fit_mapreduce(ComBat(), src, site, None, block_bytes=block)
        out = np.lib.format.open_memmap(
            path.with_name(path.stem + "_out.npy"), mode="w+", dtype=np.float32, shape=src.shape
        )
        transform_mapreduce(model, src, site, None, out=out, block_bytes=block)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_is_set_by_the_block_budget(tmp_path):
    """8× the subjects, same peak: a block budget, not the data, bounds what is allocated."""
    rng = np.random.default_rng(0)
    p, block = 3000, 1 << 20
    peaks, sizes = [], []
    for n in (300, 2400):
        site = np.repeat(["a", "b", "c"], n // 3)
        X = rng.normal(size=(n, p)).astype(np.float32) + (np.arange(n) % 3)[:, None]
        path = tmp_path / f"x{n}.npy"
        _npy(path, X, np.float32)
        del X
        peaks.append(_peak_bytes(path, site, block))
        sizes.append(n * p * 8)
    assert peaks[1] < 1.3 * peaks[0] + (1 << 20), peaks
    assert peaks[1] < sizes[1] / 4, (peaks, sizes)


def test_moments_refuse_non_finite(make_data):
    X, site, _ = make_data(8, n_features=50)
    X[3, 7] = np.inf
    codes = np.unique(site, return_inverse=True)[1]
    with pytest.raises(Exception, match="NaN or Inf values in 1 feature.*column 7"):
        site_moments(X, codes, np.zeros((len(site), 0)))


def test_reads_nifti_maps_directly(make_data, tmp_path):
    import nibabel as nib

    from pipeline.gauge._voxelwise import NiftiSource

    X, site, cov = make_data(9, n_features=60)
    grid = (4, 5, 6)
    flat = np.sort(np.random.default_rng(0).choice(120, 60, replace=False))
    paths = []
    for k, row in enumerate(X.astype(np.float32)):
        vol = np.zeros(120, np.float32)
        vol[flat] = row
        paths.append(tmp_path / f"s{k}.nii.gz")
        nib.save(nib.Nifti1Image(vol.reshape(grid), np.eye(4)), paths[-1])
    source = NiftiSource(paths, flat, grid)
    model = fit_mapreduce(ComBat(), source, site, cov[["age"]], block_bytes=8 * 60 * 10)
    X32 = X.astype(np.float32).astype(np.float64)
    expected = ComBat().fit_transform(X32, site, cov[["age"]])
    got = transform_mapreduce(model, source, site, cov[["age"]])
    assert np.abs(got - expected).max() <= 1e-6


def test_eb_iterations_follow_the_global_rule():
    """The stopping count over feature blocks is the one over all features, NaN rule included."""
    from pipeline.gauge._eb import stop_count

    a = np.array([[0.5, 0.1], [1e-5, 1e-5], [1e-6, 1e-6]])
    b = np.array([[0.5, 0.1], [1e-3, 1e-5], [1e-5, 1e-6]])
    assert stop_count([a]) == 2
    assert stop_count([a, b]) == 3
    assert stop_count([a[:2], b[:2]]) is None  # would run on past the changes given
    c = b.copy()
    c[1, 0] = np.nan  # neuroCombat's max(nan, x) is nan: the loop stops there
    assert stop_count([a, c]) == 2
    assert stop_count([np.full((3, 2), -np.inf), a]) == 2  # a block of constant features


def test_blocks_iterate_as_the_whole_fit(make_data):
    """Many feature blocks, each iterated as often as the one-block fit: equal to rounding."""
    X, site, cov = make_data(10, n_features=900)
    expected = ComBat().fit(X, site, cov[["age"]])
    model = fit_mapreduce(ComBat(), X, site, cov[["age"]], block_bytes=8 * 60 * 256)
    assert np.abs(model.gamma_star_ - expected.gamma_star_).max() <= 1e-10
    assert np.abs(model.delta_star_ - expected.delta_star_).max() <= 1e-10
