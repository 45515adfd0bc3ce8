"""Harmonization QC: is the site still predictable, and is the biology still there?

Site prediction (leakage-free). Subjects are split by stratified K-fold on site. In each fold the
harmonizer is fitted on the training subjects only and applied to both parts; the covariates are
then regressed out of every feature (OLS fitted on the training part); a shrinkage LDA
(Ledoit-Wolf) on standardized features predicts the site of the test part. The out-of-fold
predictions give one balanced accuracy (chance :math:`1/n_{\\text{sites}}`). The permutation
p-value re-runs the classification with permuted site labels (harmonized folds kept):

.. math::

    p = \\frac{1 + \\#\\{\\pi : \\mathrm{BA}_\\pi \\ge \\mathrm{BA}\\}}{1 + n_{\\text{perm}}}.

Biology kept. Per feature, the OLS t-statistic of each term (age, diagnosis, …) with all
covariates in the model, before and after harmonization; the correlation of the two t-maps over
features, and the mean :math:`|t|`, tell whether the effect survived.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from pipeline.gauge._combat import ComBat
from pipeline.gauge._design import CovariateEncoding
from pipeline.gauge._errors import HarmonizationError

log = logging.getLogger(__name__)


def _residualize(
    train: np.ndarray, test: np.ndarray, c_train: np.ndarray, c_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the covariate fit (intercept + covariates, OLS on ``train``) from both parts."""
    d_train = np.column_stack([np.ones(len(train)), c_train])
    d_test = np.column_stack([np.ones(len(test)), c_test])
    coef, *_ = np.linalg.lstsq(d_train, train, rcond=None)
    return train - d_train @ coef, test - d_test @ coef


def _classify(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_test: np.ndarray,
    seed: int,
    classifier: str = "lda",
) -> np.ndarray:
    del seed  # the classifiers are deterministic
    classes = np.unique(y_train)
    if classes.size == 1:  # a permuted tiny fold can hold one class only
        return np.full(len(z_test), classes[0], dtype=object)
    if classifier == "logistic":  # few features (a latent space): a standardised logistic model
        from sklearn.linear_model import LogisticRegression

        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return clf.fit(z_train, y_train).predict(z_test)
    if classifier != "lda":
        raise ValueError(f"classifier must be 'lda' or 'logistic'; got {classifier!r}")
    # n_subjects << n_features: project on the training fold's principal components first, so
    # each fit costs O(n² p) instead of a p × p shrunk covariance (200 permutations stay cheap)
    n_components = int(max(1, min(z_train.shape[0] - 1, z_train.shape[1], 50)))
    clf = make_pipeline(
        StandardScaler(),
        PCA(n_components=n_components, svd_solver="full"),
        LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
    )
    return clf.fit(z_train, y_train).predict(z_test)


def site_prediction(
    X: np.ndarray,
    site: Sequence[Any],
    covariates: pd.DataFrame | None = None,
    harmonizer: ComBat | None = None,
    combat_covariates: Sequence[str] = (),
    n_splits: int = 5,
    n_permutations: int = 100,
    max_features: int = 2000,
    seed: int = 0,
    progress: bool = False,
    classifier: str = "lda",
) -> dict[str, Any]:
    """Cross-validated site-prediction balanced accuracy, harmonizer fitted inside each fold.

    Parameters
    ----------
    X : ndarray of shape (n_subjects, n_features)
    site : sequence of site labels
    covariates : DataFrame, optional
        Regressed out of the features before classification (fitted on each training fold).
    harmonizer : ComBat, optional
        Unfitted template (cloned per fold); ``None`` measures the raw data.
    combat_covariates : sequence of str
        Columns of ``covariates`` given to the harmonizer.
    n_splits, n_permutations, max_features, seed : int
        Folds (reduced to the smallest site size), permutations, features sampled (seeded) when
        there are more.
    classifier : {"lda", "logistic"}, default="lda"
        Shrunk LDA on the training fold's principal components (many features), or a
        standardised logistic regression (few features, e.g. a VAE's latent means).

    Returns
    -------
    dict
        ``balanced_accuracy``, ``chance``, ``p_value``, ``fold_scores``, ``n_splits``,
        ``n_features_used``.
    """
    from sklearn.base import clone

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(site, dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    if X.shape[1] > max_features:
        X = X[:, np.sort(rng.choice(X.shape[1], max_features, replace=False))]
    counts = pd.Series(y).value_counts()
    n_splits = int(min(n_splits, counts.min()))
    if n_splits < 2:
        raise HarmonizationError(
            f"site prediction needs at least 2 subjects per site; site '{counts.idxmin()}' has "
            f"{counts.min()}"
        )
    enc = CovariateEncoding.fit(covariates, X.shape[0])
    cmat = enc.transform(covariates, X.shape[0])
    folds = []
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in tqdm(list(cv.split(X, y)), desc="site prediction", disable=not progress):
        x_train, x_test = X[train], X[test]
        if harmonizer is not None:
            model = clone(harmonizer)
            cov_tr = covariates.iloc[train][list(combat_covariates)] if combat_covariates else None
            cov_te = covariates.iloc[test][list(combat_covariates)] if combat_covariates else None
            model.fit(x_train, y[train], cov_tr)
            x_train = model.transform(x_train, y[train], cov_tr)
            x_test = model.transform(x_test, y[test], cov_te)
        z_train, z_test = _residualize(x_train, x_test, cmat[train], cmat[test])
        folds.append((train, test, z_train, z_test))

    def _score(labels: np.ndarray) -> tuple[float, list[float]]:
        pred = np.empty(len(labels), dtype=object)
        scores = []
        for train, test, z_train, z_test in folds:
            pred[test] = _classify(z_train, labels[train], z_test, seed, classifier)
            scores.append(float(balanced_accuracy_score(labels[test], pred[test].astype(str))))
        return float(balanced_accuracy_score(labels, pred.astype(str))), scores

    # tiny matrices: BLAS threads only add contention. Small folds make sklearn warn that a fold's
    # predictions hold a site its truth lacks, or that a permuted class has one sample: expected
    # here (the permutation null includes such folds), and thousands of lines otherwise
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="Only one sample available")
        warnings.filterwarnings("ignore", message="A single label was found")
        score, fold_scores = _score(y)
        null = [_score(rng.permutation(y))[0] for _ in range(n_permutations)]
    p_value = (1 + sum(s >= score for s in null)) / (1 + n_permutations)
    return {
        "balanced_accuracy": score,
        "chance": 1.0 / counts.size,
        "p_value": float(p_value),
        "null_mean": float(np.mean(null)) if null else float("nan"),
        "fold_scores": fold_scores,
        "n_splits": n_splits,
        "n_permutations": n_permutations,
        "n_features_used": int(X.shape[1]),
    }


def effect_maps(X: np.ndarray, covariates: pd.DataFrame) -> pd.DataFrame:
    """Per-feature OLS t-statistics of every covariate column (all in one model, with intercept).

    Returns a DataFrame with one row per design column (categorical levels as ``name[level]``)
    and one column per feature.
    """
    X = np.asarray(X, dtype=np.float64)
    enc = CovariateEncoding.fit(covariates, X.shape[0])
    design = np.column_stack([np.ones(X.shape[0]), enc.transform(covariates, X.shape[0])])
    coef, *_ = np.linalg.lstsq(design, X, rcond=None)
    resid = X - design @ coef
    dof = X.shape[0] - design.shape[1]
    if dof < 1:
        raise HarmonizationError("effect maps need more subjects than covariate columns")
    sigma2 = (resid**2).sum(0) / dof
    xtx_inv = np.linalg.pinv(design.T @ design)
    se = np.sqrt(np.outer(np.diag(xtx_inv), sigma2))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, coef / se, 0.0)
    return pd.DataFrame(t[1:], index=enc.columns)


def biology_kept(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per term: correlation of the t-maps over features and mean ``|t|`` before/after."""
    rows = []
    for term in before.index:
        b, a = before.loc[term].to_numpy(), after.loc[term].to_numpy()
        ok = np.isfinite(a) & np.isfinite(b)
        corr = float(np.corrcoef(b[ok], a[ok])[0, 1]) if ok.sum() > 2 else float("nan")
        rows.append(
            {
                "term": term,
                "t_map_correlation": corr,
                "mean_abs_t_before": float(np.abs(b[ok]).mean()),
                "mean_abs_t_after": float(np.abs(a[ok]).mean()),
            }
        )
    columns = ["term", "t_map_correlation", "mean_abs_t_before", "mean_abs_t_after"]
    return pd.DataFrame(rows, columns=columns).set_index("term")  # no terms: an empty table
