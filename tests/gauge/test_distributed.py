"""Distributed ComBat: site summaries → joint fit → local apply equals centralized ComBat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.gauge import ComBat, CovariateError, HarmonizationError
from pipeline.gauge._distributed import (
    SiteStatistics,
    add_site_statistics,
    fit_site_statistics,
    site_statistics,
)


def _per_site(X, site, cov, **kw):
    return [
        site_statistics(X[site == s], site[site == s], cov[site == s].reset_index(drop=True), **kw)
        for s in np.unique(site)
    ]


@pytest.mark.parametrize(
    "kw", [{}, {"ref_batch": "site1"}, {"parametric": False}, {"mean_only": True}], ids=str
)
def test_distributed_equals_centralized(kw, make_data, tmp_path):
    X, site, cov = make_data(11, sizes=(14, 30, 17, 20), n_features=200)
    cov = cov[["sex", "handedness", "age"]].copy()
    cov.loc[site == "site0", "handedness"] = "R"  # a level absent at one site
    files = [s.save(tmp_path / f"s{i}.npz") for i, s in enumerate(_per_site(X, site, cov))]
    model = fit_site_statistics(ComBat(**kw), [SiteStatistics.load(f) for f in files])
    expected = ComBat(**kw).fit(X, site, cov)
    assert np.abs(model.transform(X, site, cov) - expected.transform(X, site, cov)).max() <= 1e-6
    assert model.encoding_ == expected.encoding_


def test_unseen_site_from_its_statistics(make_data):
    X, site, cov = make_data(12, sizes=(14, 30, 17, 20), n_features=150)
    cov = cov[["sex", "age"]]
    stats = _per_site(X, site, cov)
    model = fit_site_statistics(ComBat(), stats[:3])
    add_site_statistics(model, stats[3:])
    new = site == "site3"
    expected = ComBat().fit(X[~new], site[~new], cov[~new].reset_index(drop=True))
    expected.add_sites(X[new], site[new], cov[new].reset_index(drop=True))
    assert np.abs(model.transform(X, site, cov) - expected.transform(X, site, cov)).max() <= 1e-6


def test_files_hold_no_subject_values_and_are_checked(make_data, tmp_path):
    X, site, cov = make_data(13, sizes=(14, 30), n_features=80)
    cov = cov[["sex", "age"]]
    path = _per_site(X, site, cov)[0].save(tmp_path / "site0.npz")
    with np.load(path) as arrays:
        values = np.concatenate([np.ravel(arrays[k]).astype(np.float64) for k in arrays.files])
    assert not np.isin(X[site == "site0"], values).any()
    assert not np.isin(cov["age"].to_numpy()[site == "site0"], values).any()
    with pytest.raises(HarmonizationError, match="fewer than 20 subjects: site0 \\(14\\)"):
        site_statistics(X[site == "site0"], site[site == "site0"], min_subjects=20)
    with pytest.raises(HarmonizationError, match="different features"):
        fit_site_statistics(
            ComBat(), _per_site(X, site, cov) + _per_site(X[:, :10] * 0 + X[:, :10], site, cov)
        )
    with pytest.raises(CovariateError, match="different covariates"):
        a = site_statistics(X[site == "site0"], site[site == "site0"])
        b = site_statistics(X[site == "site1"], site[site == "site1"], cov[site == "site1"])
        fit_site_statistics(ComBat(), [a, b])
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(HarmonizationError, match="SHA-256"):
        SiteStatistics.load(path)


def test_command_line_three_steps(make_data, tmp_path, capsys):
    X, site, cov = make_data(14, sizes=(14, 30, 17), n_features=40)
    cov = cov[["sex", "age"]]
    ids = [f"sub-{k:03d}" for k in range(len(site))]
    parts = cov.assign(participant_id=ids, site=site)
    features = pd.DataFrame(X, index=pd.Index(ids, name="participant_id"))
    features.columns = [f"roi{j}" for j in range(X.shape[1])]
    stats = []
    for s in np.unique(site):
        d = tmp_path / s
        d.mkdir()
        features[site == s].to_csv(d / "features.tsv", sep="\t")
        parts[site == s].to_csv(d / "participants.tsv", sep="\t", index=False)
        args = ["harmonize", "site-stats", "--features", str(d / "features.tsv")]
        args += ["--participants", str(d / "participants.tsv"), "--covariates", "sex", "age"]
        assert main([*args, "-o", str(d / "stats.npz")]) == 0
        stats.append(str(d / "stats.npz"))
    model = tmp_path / "model.npz"
    assert main(["harmonize", "fit", *stats, "-o", str(model)]) == 0
    expected = ComBat().fit_transform(X, site, cov)
    for s in np.unique(site):
        d = tmp_path / s
        args = ["harmonize", "apply", "--model", str(model), "--features", str(d / "features.tsv")]
        args += ["--participants", str(d / "participants.tsv"), "-o", str(d / "out.tsv")]
        assert main(args) == 0
        got = pd.read_csv(d / "out.tsv", sep="\t", index_col=0)
        assert list(got.columns) == list(features.columns)
        np.testing.assert_allclose(got.to_numpy(), expected[site == s], rtol=1e-9, atol=1e-6)
    bad = ["harmonize", "apply", "--model", str(tmp_path / "none.npz")]
    bad += ["--features", str(d / "features.tsv"), "--participants", str(d / "participants.tsv")]
    assert main([*bad, "-o", str(tmp_path / "x.tsv")]) == 2
    assert "none.npz: model file does not exist" in capsys.readouterr().err
