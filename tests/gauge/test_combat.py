"""ComBat: parity with neuroCombat 0.2.12, streaming inputs, out-of-sample use, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from pipeline.errors import SymprepError
from pipeline.gauge import ComBat, CovariateError, HarmonizationError, UnseenSiteError

neuroCombat = pytest.importorskip("neuroCombat").neuroCombat  # noqa: N816

VARIANTS = [
    {},
    {"mean_only": True},
    {"eb": False},
    {"parametric": False},
    {"parametric": False, "mean_only": True},
]


def reference(X, site, cov, **kw):
    """neuroCombat on the same data (it wants features × subjects)."""
    covars = cov.assign(site=site)
    cat = [c for c in cov.columns if cov[c].dtype == object]
    num = [c for c in cov.columns if c not in cat]
    res = neuroCombat(X.T.copy(), covars, "site", categorical_cols=cat, continuous_cols=num, **kw)
    return res["data"].T


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(kw) or "default")
def test_parity_with_neurocombat(seed, kw, make_data):
    X, site, cov = make_data(seed, n_features=80 if kw.get("parametric") is False else 150)
    cov = cov[["sex", "handedness", "age"]]
    ours = ComBat(block_features=33, **kw).fit_transform(X, site, cov)
    assert np.abs(ours - reference(X, site, cov, **kw)).max() <= 1e-6
    assert np.abs(ours - X).max() > 0.1  # it did something


@pytest.mark.parametrize("kw", [{}, {"parametric": False}, {"eb": False}], ids=str)
def test_parity_ref_batch(kw, monkeypatch, make_data):
    monkeypatch.setattr(np, "int", int, raising=False)  # neuroCombat's ref path uses np.int
    X, site, cov = make_data(3, n_features=60)
    cov = cov[["sex", "age"]]
    ours = ComBat(ref_batch="site1", **kw).fit_transform(X, site, cov)
    assert np.abs(ours - reference(X, site, cov, ref_batch="site1", **kw)).max() <= 1e-6
    np.testing.assert_array_equal(ours[site == "site1"], X[site == "site1"])


def test_parity_without_covariates(make_data):
    X, site, _ = make_data(4, n_features=50)
    ours = ComBat().fit_transform(X, site)
    ref = neuroCombat(X.T.copy(), pd.DataFrame({"site": site}), "site")["data"].T
    assert np.abs(ours - ref).max() <= 1e-6


def test_streaming_inputs_match_in_memory(sites_data, tmp_path):
    X, site, cov = sites_data
    expected = ComBat().fit_transform(X, site, cov)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=np.float64, shape=X.shape)
    ComBat(block_features=17).fit_transform(mm, site, cov, out=out)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10)
    dX = da.from_array(X, chunks=(25, 40))
    lazy = ComBat(block_features=40).fit_transform(dX, site, cov)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=0, atol=1e-10)


def test_out_of_sample_equals_in_fit(sites_data):
    X, site, cov = sites_data
    model = ComBat()
    full = model.fit_transform(X, site, cov)
    rows = np.array([0, 5, 40, 60, 61])
    part = model.transform(X[rows], site[rows], cov.iloc[rows].reset_index(drop=True))
    np.testing.assert_allclose(part, full[rows], rtol=0, atol=1e-12)


def test_constant_features_pass_through(sites_data):
    X, site, cov = sites_data
    X = X.copy()
    X[:, [3, 50]] = 7.25
    model = ComBat()
    Xh = model.fit_transform(X, site, cov)
    np.testing.assert_array_equal(Xh[:, [3, 50]], 7.25)
    assert model.constant_features_.sum() == 2
    # the priors ignore the constant features: same result as fitting without them
    keep = np.setdiff1d(np.arange(X.shape[1]), [3, 50])
    np.testing.assert_allclose(
        Xh[:, keep], ComBat().fit_transform(X[:, keep], site, cov), atol=1e-10
    )


def test_site_effects_removed(sites_data):
    X, site, cov = sites_data
    Xh = ComBat().fit_transform(X, site, cov)
    means = np.array([Xh[site == s].mean(0) for s in np.unique(site)])
    raw = np.array([X[site == s].mean(0) for s in np.unique(site)])
    assert means.std(0).mean() < 0.35 * raw.std(0).mean()


@pytest.mark.parametrize("priors", ["frozen", "site"])
def test_unseen_site_frozen_model(sites_data, priors):
    X, site, cov = sites_data
    train = site != "site1"
    model = ComBat().fit(X[train], site[train], cov[train].reset_index(drop=True))
    beta, vp = model.beta_.copy(), model.var_pooled_.copy()
    new = ~train
    new_cov = cov[new].reset_index(drop=True)
    before = model.transform(X[train], site[train], cov[train].reset_index(drop=True))
    model.add_sites(X[new], site[new], new_cov, priors=priors)
    np.testing.assert_array_equal(model.beta_, beta)
    np.testing.assert_array_equal(model.var_pooled_, vp)
    assert model.sites_[-1] == "site1" and model.added_sites_ == ["site1"]
    # training subjects unchanged by adding a site
    after = model.transform(X[train], site[train], cov[train].reset_index(drop=True))
    np.testing.assert_array_equal(before, after)
    Xn = model.transform(X[new], site[new], new_cov)
    # the new site's location moves onto the training sites' grand mean
    gap_before = np.abs(X[new].mean(0) - before.mean(0)).mean()
    gap_after = np.abs(Xn.mean(0) - before.mean(0)).mean()
    assert gap_after < 0.5 * gap_before
    with pytest.raises(UnseenSiteError, match="too few subjects"):
        model.add_sites(X[:3], ["new"] * 3, cov.iloc[:3])
    with pytest.raises(UnseenSiteError, match="not seen in fit: other"):
        model.transform(X[:2], ["other", "site0"], cov.iloc[:2])


def test_save_load_roundtrip(sites_data, tmp_path):
    X, site, cov = sites_data
    model = ComBat(mean_only=True).fit(X, site, cov)
    path = model.save(tmp_path / "combat")
    assert path.name == "combat.npz" and (tmp_path / "combat.json").exists()
    loaded = ComBat.load(path)
    assert loaded.sites_ == model.sites_ and loaded.mean_only
    assert loaded.feature_mask_hash_ == model.feature_mask_hash_
    np.testing.assert_array_equal(loaded.transform(X, site, cov), model.transform(X, site, cov))
    path.write_bytes(path.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(HarmonizationError, match="SHA-256"):
        ComBat.load(path)


def test_bad_inputs(sites_data):
    X, site, cov = sites_data
    Xn = X.copy()
    Xn[4, 7] = np.nan
    with pytest.raises(HarmonizationError, match="NaN or Inf values in 1 feature.*column 7"):
        ComBat().fit(Xn, site, cov)
    lone = site.astype(object)
    lone[0] = "lonely"
    with pytest.raises(HarmonizationError, match="single subject: lonely"):
        ComBat().fit(X, lone, cov)
    with pytest.raises(HarmonizationError, match="batch has 10 labels but X has 69"):
        ComBat().fit(X, site[:10], cov)
    bad = cov.assign(when=pd.Timestamp("2020-01-01"))
    with pytest.raises(CovariateError, match="'when' has unsupported dtype datetime64"):
        ComBat().fit(X, site, bad)
    with pytest.raises(CovariateError, match="collinear"):
        ComBat().fit(X, site, cov.assign(scanner=site))
    with pytest.raises(HarmonizationError, match="ref_batch 'nope'"):
        ComBat(ref_batch="nope").fit(X, site, cov)
    with pytest.raises(HarmonizationError, match="max_nonparametric_features=100"):
        ComBat(parametric=False, max_nonparametric_features=100).fit(X, site, cov)
    model = ComBat().fit(X, site, cov)
    with pytest.raises(CovariateError, match="'sex' has level.*'X'"):
        model.transform(X[:2], site[:2], cov.iloc[:2].assign(sex=["X", "F"]))
    with pytest.raises(HarmonizationError, match="fitted with 120"):
        model.transform(X[:, :5], site, cov)
    assert issubclass(HarmonizationError, SymprepError)


def test_sklearn_conventions():
    est = ComBat(mean_only=True, ref_batch="a")
    check_no_attributes_set_in_init("ComBat", est)
    check_parameters_default_constructible("ComBat", est)
    check_get_params_invariance("ComBat", est)
    check_set_params("ComBat", est)
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        ComBat().transform(np.ones((2, 2)), ["a", "b"])
