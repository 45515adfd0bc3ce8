"""Harmonization QC and the group entry point on synthetic sites with a planted diagnosis effect."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.gauge import (
    ComBat,
    GaugeOptions,
    HarmonizationError,
    biology_kept,
    effect_maps,
    run_harmonization,
    site_prediction,
)

QC = {"n_splits": 3, "n_permutations": 9}


@pytest.fixture
def planted(make_data):
    """Four sites of 35-50 subjects, strong site effects, diagnosis effect on features 0-19."""
    return make_data(0, sizes=(40, 50, 35, 45), n_features=60, site_shift=1.5, diagnosis_effect=1.0)


def test_site_predictable_before_chance_after_and_biology_kept(planted):
    X, site, cov = planted
    combat_cov = ["age", "sex", "handedness"]
    before = site_prediction(X, site, cov, None, **QC)
    after = site_prediction(X, site, cov, ComBat(), combat_cov, **QC)
    assert before["balanced_accuracy"] > 0.9 and before["p_value"] == pytest.approx(0.1)
    assert after["balanced_accuracy"] < before["chance"] + 0.12
    assert after["n_splits"] == 3 and before["chance"] == 0.25
    Xh = ComBat().fit_transform(X, site, cov[combat_cov])
    t_before, t_after = effect_maps(X, cov), effect_maps(Xh, cov)
    kept = biology_kept(t_before, t_after)
    assert kept.loc["diagnosis", "t_map_correlation"] > 0.9
    planted_t = t_after.loc["diagnosis"].to_numpy()
    assert planted_t[:20].mean() > 3.0 and np.abs(planted_t[20:]).mean() < 1.5


def test_site_prediction_needs_two_subjects_per_site(planted):
    X, site, cov = planted
    site = site.astype(object)
    site[0] = "alone"
    with pytest.raises(HarmonizationError, match="site 'alone' has 1"):
        site_prediction(X, site, cov, None, **QC)


def _frames(X, site, cov, n_features=60):
    ids = [f"sub-{i:03d}" for i in range(X.shape[0])]
    features = pd.DataFrame(X, index=ids, columns=[f"roi{j}" for j in range(n_features)])
    participants = cov.assign(site=site).set_axis(ids)
    participants.index.name = "participant_id"
    return features, participants


def test_run_harmonization_writes_outputs(planted, tmp_path):
    X, site, cov = planted
    features, participants = _frames(X, site, cov)
    # last site held out of the fit: it goes through the unseen-site path
    participants["train"] = participants["site"] != "site3"
    options = GaugeOptions(fit_on="train", qc_splits=3, qc_permutations=5, qc_max_features=40)
    summary = run_harmonization(features, participants, options, tmp_path, seed=1)
    assert summary["added_sites"] == ["site3"] and summary["n_training_subjects"] == 125
    out = pd.read_csv(tmp_path / "desc-harmonized_features.tsv", sep="\t", index_col=0)
    assert out.index.name == "participant_id" and out.shape == features.shape
    model = ComBat.load(tmp_path / "combat_model.npz")
    assert model.sites_ == ["site0", "site1", "site2", "site3"]
    train = participants["train"].to_numpy()
    expected = model.transform(X[train], site[train], cov[["age", "sex"]][train])
    np.testing.assert_allclose(out.to_numpy()[train], expected, atol=1e-8)
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["site_prediction"]["before"]["balanced_accuracy"] > 0.9
    for name in ("site_prediction.png", "effect_maps.png", "site_pc1.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "effects.tsv", sep="\t", index_col=0).index.tolist() == [
        "sex[M]",
        "age",
        "diagnosis",
    ]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_run_harmonization_diagnosis_needs_explicit_option(planted, tmp_path):
    X, site, cov = planted
    features, participants = _frames(X, site, cov)
    options = GaugeOptions(covariates=["age", "diagnosis"], qc_permutations=0, qc_splits=2)
    with pytest.raises(ConfigError, match="allow_diagnosis_covariate"):
        run_harmonization(features, participants, options, tmp_path, seed=0)
    options.allow_diagnosis_covariate = True
    with pytest.warns(UserWarning, match="diagnosis is a ComBat covariate"):
        run_harmonization(features, participants, options, tmp_path, seed=0)
    with pytest.raises(HarmonizationError, match="not in participants"):
        run_harmonization(features, participants.iloc[1:], options, tmp_path, seed=0)


def test_too_few_subjects_for_site_prediction_still_harmonizes(tmp_path, rng):
    """Two subjects per site: ComBat runs and its outputs are written; the site-prediction QC,
    which needs more subjects per fold, is skipped with its reason instead of failing the stage."""
    n = 4
    X = rng.normal(size=(n, 30)) + np.repeat([0.0, 2.0], 2)[:, None]
    index = pd.Index([f"{i:02d}" for i in range(n)], name="participant_id")
    features = pd.DataFrame(X, index=index)
    participants = pd.DataFrame({"site": ["A", "A", "B", "B"]}, index=index)
    options = GaugeOptions(covariates=[], qc_permutations=0)
    result = run_harmonization(features, participants, options, tmp_path, seed=0)
    assert "skipped" in result["site_prediction"]
    assert (tmp_path / "desc-harmonized_features.tsv").exists()
    assert not (tmp_path / "site_prediction.tsv").exists()
    harmonized = pd.read_csv(tmp_path / "desc-harmonized_features.tsv", sep="\t", index_col=0)
    gap = np.abs(harmonized.iloc[:2].mean() - harmonized.iloc[2:].mean()).mean()
    assert gap < 0.5 * np.abs(X[:2].mean(0) - X[2:].mean(0)).mean()
