"""Synthetic multi-site data with planted site, covariate and diagnosis effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def make_sites(
    seed: int,
    sizes: tuple[int, ...] = (12, 30, 7, 20),
    n_features: int = 120,
    site_shift: float = 1.0,
    diagnosis_effect: float = 0.0,
    n_effect_features: int = 20,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(X, site, covariates)`` with additive and multiplicative site effects.

    Ages are float32-exact (neuroCombat casts continuous covariates to float32). Diagnosis adds
    ``diagnosis_effect`` to the first ``n_effect_features`` features of patients.
    """
    rng = np.random.default_rng(seed)
    site = np.repeat([f"site{i}" for i in range(len(sizes))], sizes)
    n = site.shape[0]
    age = rng.uniform(20, 80, n).astype(np.float32).astype(np.float64)
    sex = rng.choice(["F", "M"], n)
    handed = rng.choice(["L", "R", "A"], n)
    diagnosis = rng.integers(0, 2, n)
    X = rng.normal(size=(n, n_features)) * rng.uniform(0.5, 2.0, n_features)
    X += 0.05 * age[:, None] * rng.uniform(0, 1, n_features) + 0.8 * (sex == "M")[:, None]
    X[:, :n_effect_features] += diagnosis_effect * diagnosis[:, None]
    levels = np.unique(site)
    shift = {s: rng.normal(0, site_shift, n_features) for s in levels}
    scale = {s: rng.uniform(0.6, 1.8, n_features) for s in levels}
    X = X * np.array([scale[s] for s in site]) + np.array([shift[s] for s in site]) + 50.0
    cov = pd.DataFrame({"sex": sex, "handedness": handed, "age": age, "diagnosis": diagnosis})
    return X, site, cov


@pytest.fixture
def sites_data() -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Four unequal sites, 120 features, covariates sex, handedness (3 levels), age."""
    X, site, cov = make_sites(0)
    return X, site, cov[["sex", "handedness", "age"]]


@pytest.fixture
def make_data():
    """The :func:`make_sites` factory (tests call it with their own seeds and sizes)."""
    return make_sites
