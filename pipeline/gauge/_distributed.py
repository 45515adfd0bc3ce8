"""Distributed ComBat across sites that do not share data (Chen et al., NeuroImage 2022).

Why we wrote our own: no harmonization package a pipeline can call fits ComBat from per-site
summaries; the authors' reference code (andy1764/Distributed-ComBat) is R/Python research code
that exchanges pickles and needs several rounds of messages. Because the fit of
:mod:`._moments` needs only within-site centred statistics, one round suffices and the result
is the centralized fit (equal to rounding, tested at 1e-6):

1. each site runs :func:`site_statistics` on its own data and sends the small file
   :meth:`SiteStatistics.save` writes (``symprep harmonize site-stats``);
2. a coordinator combines the files into a model (:func:`fit_site_statistics`,
   ``symprep harmonize fit``) and sends the model back;
3. each site adjusts its own data with the model (``symprep harmonize apply``).

What a site-statistics file reveals, for each site label in it: the number of subjects; per
feature, the site mean, the within-site sum of squares and the within-site covariance with each
encoded covariate column; the covariates' site means and covariance (so the share of each
category level and the mean and spread of each continuous covariate); which features take one
value at that site, and that value (it is the site mean); the covariate names and the category
levels present; a SHA-256 of the feature names. It holds no subject's value, identifier or
covariates. With few subjects summaries can determine values (two subjects: the mean and the
sum of squares give both values; with ``q`` covariate columns known, ``q + 1`` subjects are
determined by the means and cross-products), so :func:`site_statistics` refuses sites with fewer
than ``max(min_subjects, q + 3)`` subjects (``min_subjects`` 10 by default). The fitted model the
coordinator returns holds the same kind of aggregates for every site (its L/S estimates and their
EB posteriors, subjects per site) and the pooled coefficients.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

import pipeline
from pipeline.gauge._design import CovariateEncoding, check_batch, site_index, site_levels
from pipeline.gauge._errors import CovariateError, HarmonizationError
from pipeline.gauge._mapreduce import BLOCK_BYTES, site_moments
from pipeline.gauge._moments import SiteMoments, add_sites_from_moments, fit_from_moments
from pipeline.gauge._persist import read_checked, write_checked

log = logging.getLogger(__name__)

FORMAT = "symprep-combat-site-stats"
FORMAT_VERSION = 1
_FIELDS = ("mean", "sxx", "cmean", "scc", "scx", "const", "value")


def feature_hash(names: Sequence[Any] | None, n_features: int) -> str:
    """SHA-256 of the feature names (or of the feature count when the data have no names)."""
    h = hashlib.sha256(str(n_features).encode())
    for name in names if names is not None else []:
        h.update(b"\0" + str(name).encode())
    return h.hexdigest()


def _full_columns(encoding: CovariateEncoding) -> list[str]:
    """Design column names with every category level (none dropped)."""
    names = [f"{c}[{lvl}]" for c, levels in encoding.categorical.items() for lvl in levels]
    return names + list(encoding.continuous)


def _full_design(
    encoding: CovariateEncoding, covariates: pd.DataFrame | None, n: int
) -> np.ndarray:
    """Covariates one-hot encoded with every level kept (so sites can be joined later)."""
    if covariates is None or not encoding.names:
        return np.zeros((n, 0))
    blocks = []
    for name, levels in encoding.categorical.items():
        values = covariates[name].astype(object).to_numpy()
        blocks.append(
            np.stack([[v == lvl for v in values] for lvl in levels], axis=1).astype(np.float64)
        )
    for name in encoding.continuous:
        blocks.append(covariates[name].to_numpy(dtype=np.float64).reshape(-1, 1))
    return np.hstack(blocks)


@dataclass
class SiteStatistics:
    """The summary of one or more sites' data that distributed ComBat exchanges.

    Attributes
    ----------
    sites : list
        Site labels.
    moments : list of SiteMoments
        Their statistics, covariate columns ``columns`` (every category level kept).
    encoding : CovariateEncoding
        Covariate names and the levels present at these sites.
    feature_hash : str
        :func:`feature_hash` of the features (all sites must share it).
    """

    sites: list[Any]
    moments: list[SiteMoments]
    encoding: CovariateEncoding
    feature_hash: str

    @property
    def columns(self) -> list[str]:
        """Covariate design columns of :attr:`moments`."""
        return _full_columns(self.encoding)

    @property
    def n_features(self) -> int:
        """Number of features."""
        return self.moments[0].n_features

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the arrays to ``path`` (``.npz``) and a JSON sidecar beside it, atomically."""
        arrays = {f"s{k}_{f}": getattr(m, f) for k, m in enumerate(self.moments) for f in _FIELDS}
        sidecar = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "symprep_version": pipeline.__version__,
            "sites": [
                {"label": s, "n": m.n} for s, m in zip(self.sites, self.moments, strict=True)
            ],
            "covariates": self.encoding.to_json(),
            "columns": self.columns,
            "n_features": self.n_features,
            "feature_hash": self.feature_hash,
            "contains": "per-site counts, feature means, within-site sums of squares and "
            "covariate cross-products; no subject values (see pipeline.gauge._distributed)",
        }
        return write_checked(path, arrays, sidecar, compressed=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SiteStatistics:
        """Read a file written by :meth:`save`, checking its format and integrity."""
        meta, data = read_checked(path, FORMAT, FORMAT_VERSION, "site-statistics")
        moments = []
        with np.load(io.BytesIO(data)) as arrays:
            for k, site in enumerate(meta["sites"]):
                fields = {f: arrays[f"s{k}_{f}"] for f in _FIELDS}
                moments.append(SiteMoments(n=int(site["n"]), **fields))
        return cls(
            sites=[s["label"] for s in meta["sites"]],
            moments=moments,
            encoding=CovariateEncoding.from_json(meta["covariates"]),
            feature_hash=meta["feature_hash"],
        )


def site_statistics(
    X: Any,
    batch: Sequence[Any],
    covariates: pd.DataFrame | None = None,
    *,
    feature_names: Sequence[Any] | None = None,
    min_subjects: int = 10,
    block_bytes: int = BLOCK_BYTES,
    client: Any = None,
) -> SiteStatistics:
    """Summarize one site's data (or a few sites') for distributed ComBat.

    Parameters
    ----------
    X : array-like, numpy.memmap, dask array or a source
        The site's subjects × features (read in blocks, see :mod:`._mapreduce`).
    batch : sequence of length n_subjects
        Site label of each subject (usually one label).
    covariates : DataFrame, optional
        Effects to preserve; every site must give the same columns.
    feature_names : sequence, optional
        Names of the features (hashed, so that the coordinator can check all sites agree).
    min_subjects : int, default=10
        Fewest subjects a site may have (also at least ``n_covariate_columns + 3``): small sites'
        summaries can determine subject values.
    block_bytes : int, default=32 MB
    client : distributed.Client, optional

    Returns
    -------
    SiteStatistics
    """
    n = int(X.shape[0])
    labels = check_batch(batch, n)
    sites = site_levels(labels)
    codes = site_index(labels, sites)
    encoding = CovariateEncoding.fit(covariates, n)
    C = _full_design(encoding, covariates, n)
    counts = np.bincount(codes, minlength=len(sites))
    floor = max(min_subjects, C.shape[1] + 3)
    small = [f"{s} ({c})" for s, c in zip(sites, counts, strict=True) if c < floor]
    if small:
        raise HarmonizationError(
            f"site(s) with fewer than {floor} subjects: {', '.join(small)}; their summaries "
            "could reveal subject values (min_subjects, or fewer covariates)"
        )
    moments = site_moments(X, codes, C, block_bytes, client)
    return SiteStatistics(
        sites=[sites[k] for k in moments],
        moments=list(moments.values()),
        encoding=encoding,
        feature_hash=feature_hash(feature_names, int(X.shape[1])),
    )


def _joint_encoding(stats: Sequence[SiteStatistics]) -> CovariateEncoding:
    first = stats[0].encoding
    for s in stats[1:]:
        if list(s.encoding.categorical) != list(first.categorical) or list(
            s.encoding.continuous
        ) != list(first.continuous):
            raise CovariateError(
                f"sites give different covariates: categorical {list(first.categorical)} and "
                f"continuous {first.continuous} vs {list(s.encoding.categorical)} and "
                f"{s.encoding.continuous}"
            )
    categorical = {}
    for name in first.categorical:
        union = np.array([lvl for s in stats for lvl in s.encoding.categorical[name]], dtype=object)
        categorical[name] = site_levels(union)
    return CovariateEncoding(categorical=categorical, continuous=list(first.continuous))


def _check_features(stats: Sequence[SiteStatistics], expected: str | None = None) -> None:
    hashes = {s.feature_hash for s in stats} | ({expected} if expected else set())
    if len(hashes) != 1:
        raise HarmonizationError(
            "site statistics were computed on different features (feature names or counts "
            f"differ: {sorted(s.n_features for s in stats)} features)"
        )


def fit_site_statistics(estimator: Any, stats: Sequence[SiteStatistics]) -> Any:
    """The ComBat model of the pooled data of all sites, from their statistics only.

    Parameters
    ----------
    estimator : ComBat
        Unfitted; its parameters (``parametric``, ``eb``, ``mean_only``, ``ref_batch`` …) are
        used on a clone.
    stats : sequence of SiteStatistics
        One entry per file; a site label may appear in only one.

    Returns
    -------
    ComBat
        Fitted; equal to ``estimator.fit`` on the pooled data up to rounding.
    """
    if not stats:
        raise HarmonizationError("no site statistics given")
    _check_features(stats)
    encoding = _joint_encoding(stats)
    sites, moments = [], []
    for s in stats:
        for label, m in zip(s.sites, s.moments, strict=True):
            sites.append(label)
            moments.append(m.project(s.columns, encoding.columns))
    model = fit_from_moments(clone(estimator), sites, moments, encoding)
    model.feature_hash_ = stats[0].feature_hash
    return model


def add_site_statistics(model: Any, stats: Sequence[SiteStatistics], priors: str = "frozen") -> Any:
    """Add sites that were not in the fit, from their statistics (model otherwise frozen)."""
    _check_features(stats, getattr(model, "feature_hash_", None))
    full = list(model.encoding_.names)
    sites, moments = [], []
    for s in stats:
        if s.encoding.names != full:
            raise CovariateError(
                f"unseen site(s) {s.sites} give covariates {s.encoding.names}, the model {full}"
            )
        for name, levels in s.encoding.categorical.items():
            extra = [lvl for lvl in levels if lvl not in model.encoding_.categorical[name]]
            if extra:
                raise CovariateError(
                    f"covariate '{name}' has level(s) {extra} not seen in fit at site(s) {s.sites}"
                )
        for label, m in zip(s.sites, s.moments, strict=True):
            sites.append(label)
            moments.append(m.project(s.columns, model.encoding_.columns))
    return add_sites_from_moments(model, sites, moments, priors)
