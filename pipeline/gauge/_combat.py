"""ComBat harmonization (Johnson et al. 2007; Fortin et al. 2017, 2018) as a streaming estimator.

For subject :math:`k` of site :math:`i` and feature :math:`v`,

.. math::

    x_{kv} = \\alpha_v + c_k^\\top\\beta_v + \\gamma_{iv} + \\delta_{iv}\\,\\varepsilon_{kv},
    \\qquad
    x^{\\text{ComBat}}_{kv} = \\frac{x_{kv} - \\hat\\alpha_v - c_k^\\top\\hat\\beta_v
        - \\hat\\sigma_v\\gamma^*_{iv}}{\\delta^*_{iv}} + \\hat\\alpha_v + c_k^\\top\\hat\\beta_v

(written as neuroCombat computes it, on the standardized scale
:math:`s_{kv} = (x_{kv} - \\hat\\alpha_v - c_k^\\top\\hat\\beta_v)/\\hat\\sigma_v`). The
coefficients come from ordinary least squares on the design ``[site indicators | covariates]``;
:math:`\\hat\\alpha_v` is the size-weighted mean of the site intercepts (or the reference site's
intercept); :math:`\\hat\\sigma^2_v` is the mean squared residual (over the reference site only
when there is one); :math:`\\gamma^*, \\delta^{*2}` are the empirical-Bayes estimates of
:mod:`pipeline.gauge._eb`. The results match neuroCombat 0.2.12 to rounding (tested at 1e-6).

Differences from neuroCombat, on purpose: features constant over the training subjects pass
through unchanged and are left out of the priors; NaN/Inf values, single-subject sites, unknown
reference sites and collinear designs are errors rather than silent; the data are read in
feature blocks (see :mod:`pipeline.gauge._stream`), so memory does not grow with the number of
features; new subjects are adjusted with their own covariates (neuroCombatFromTraining uses the
training mean of the covariate effects).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from pipeline.gauge import _eb
from pipeline.gauge._blockfit import (
    EBOptions,
    adjust,
    adjust_site,
    ls_estimates,
    merge_prior_sums,
    prior_sums,
    set_sites,
)
from pipeline.gauge._design import (
    CovariateEncoding,
    check_batch,
    site_design,
    site_index,
    site_levels,
)
from pipeline.gauge._design import hash_mask as _hash_mask
from pipeline.gauge._errors import CovariateError, HarmonizationError, UnseenSiteError
from pipeline.gauge._stream import FeatureBlocks, Workspace, is_dask, map_feature_blocks

log = logging.getLogger(__name__)


class ComBat(BaseEstimator):
    """ComBat harmonization of site effects, scikit-learn style.

    Parameters
    ----------
    parametric : bool, default=True
        Parametric empirical Bayes; ``False`` uses the non-parametric prior (``O(p^2)``, allowed up
        to ``max_nonparametric_features`` features).
    eb : bool, default=True
        Empirical-Bayes shrinkage; ``False`` uses the per-site L/S estimates as they are.
    mean_only : bool, default=False
        Adjust the site locations only (scales fixed to one).
    ref_batch : hashable, optional
        Reference site: left unchanged, the others are mapped onto it.
    block_features : int, optional
        Features per block read at once (default: a 32 MB float64 block).
    max_nonparametric_features : int, default=5000
        Largest feature count accepted with ``parametric=False``.
    min_new_site_subjects : int, default=5
        Fewest subjects :meth:`add_sites` accepts for an unseen site.
    progress : bool, default=False
        Show tqdm progress bars over feature blocks.

    Attributes
    ----------
    sites_ : list
        Site labels (sorted; sites added by :meth:`add_sites` appended).
    n_features_in_ : int
    encoding_ : CovariateEncoding
        How the covariates were encoded.
    beta_ : ndarray of shape (n_sites + n_covariate_columns, n_features)
        OLS coefficients of the design (site indicators first).
    grand_mean_, var_pooled_ : ndarray of shape (n_features,)
    gamma_hat_, delta_hat_, gamma_star_, delta_star_ : ndarray of shape (n_sites, n_features)
        L/S estimates and their EB adjustments (sites added later included).
    priors_ : list of dict
        Hyperparameters ``gamma_bar, t2, a, b`` per site (``None`` for the reference site).
    constant_features_ : ndarray of bool, shape (n_features,)
        Features constant over the training subjects (passed through unchanged).
    site_counts_ : dict
        Training subjects per site.
    feature_mask_hash_ : str
        SHA-256 of ``~constant_features_``, to check that a model and data share a feature mask.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 30)) + np.repeat([0.0, 3.0], 20)[:, None]
    >>> site = ["a"] * 20 + ["b"] * 20
    >>> Xh = ComBat().fit_transform(X, site)
    >>> bool(abs(Xh[:20].mean() - Xh[20:].mean()) < 0.2)
    True
    """

    def __init__(
        self,
        parametric: bool = True,
        eb: bool = True,
        mean_only: bool = False,
        ref_batch: Any = None,
        block_features: int | None = None,
        max_nonparametric_features: int = 5000,
        min_new_site_subjects: int = 5,
        progress: bool = False,
    ) -> None:
        self.parametric = parametric
        self.eb = eb
        self.mean_only = mean_only
        self.ref_batch = ref_batch
        self.block_features = block_features
        self.max_nonparametric_features = max_nonparametric_features
        self.min_new_site_subjects = min_new_site_subjects
        self.progress = progress

    # ------------------------------------------------------------------ helpers
    def _bar(self, it: Any, total: int, desc: str) -> Any:
        return tqdm(it, total=total, desc=desc, unit="block", disable=not self.progress)

    def _design(
        self, site_idx: np.ndarray, covariates: pd.DataFrame | None, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(site part, covariate part) of the design for these subjects."""
        return (
            site_design(site_idx, len(self.sites_), self.ref_level_),
            self.encoding_.transform(covariates, n),
        )

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, batch: Sequence[Any], covariates: pd.DataFrame | None = None) -> ComBat:
        """Estimate the site effects.

        Parameters
        ----------
        X : array-like, numpy.memmap or dask array of shape (n_subjects, n_features)
            Training data, no NaN/Inf.
        batch : sequence of length n_subjects
            Site label of each subject (at least two subjects per site).
        covariates : DataFrame of n_subjects rows, optional
            Effects to preserve: numeric columns are continuous, object/string/category/bool
            columns categorical (one-hot, first level dropped).

        Returns
        -------
        self
        """
        source = FeatureBlocks(X, self.block_features)
        n, p = source.n_subjects, source.n_features
        labels = check_batch(batch, n)
        sites = site_levels(labels)
        idx = site_index(labels, sites)
        counts = np.bincount(idx, minlength=len(sites))
        set_sites(self, sites, counts)
        self.encoding_ = CovariateEncoding.fit(covariates, n)
        site_part, cov_part = self._design(idx, covariates, n)
        design = np.hstack([site_part, cov_part])
        rank = np.linalg.matrix_rank(design)
        if rank < design.shape[1]:
            raise CovariateError(
                f"covariates {self.encoding_.names} are collinear with the sites or each other "
                f"(design rank {rank} < {design.shape[1]} columns)"
            )
        self._check_feature_count(p)
        n_sites = len(self.sites_)
        proj = np.linalg.inv(design.T @ design) @ design.T
        # subjects sorted by site: each site is a contiguous slice (views, no copies)
        order = np.argsort(idx, kind="stable")
        sorted_already = bool(np.all(order == np.arange(n)))
        edges = np.concatenate([[0], np.cumsum(counts)])
        design_o, cov_o = design[order], cov_part[order]
        proj_o = proj[:, order]
        if self.ref_level_ is None:
            weights = counts / float(n)
            var_rows = slice(0, n)
        else:
            var_rows = slice(edges[self.ref_level_], edges[self.ref_level_ + 1])

        beta = np.empty((design.shape[1], p))
        grand_mean = np.empty(p)
        var_pooled = np.empty(p)
        constant = np.empty(p, dtype=bool)
        mean_s = np.empty((n_sites, p))
        ss = np.empty((n_sites, p))
        ws = Workspace(n, source.block_features)
        for start, stop in self._bar(source.bounds(), source.n_blocks, "ComBat fit"):
            c = stop - start
            Xb = source.read(start, stop, out=ws.get("raw", c))
            if not sorted_already:
                Xb = np.take(Xb, order, axis=0, out=ws.get("sorted", c), mode="clip")
            sl = slice(start, stop)
            constant[sl] = np.ptp(Xb, axis=0) == 0
            B = proj_o @ Xb
            resid = np.matmul(design_o, B, out=ws.get("resid", c))
            np.subtract(Xb, resid, out=resid)
            r = resid[var_rows]
            vp = np.einsum("ij,ij->j", r, r) / r.shape[0]
            vp[vp == 0] = 1.0  # neuroCombat's replacement (median of a boolean mask)
            gm = weights @ B[:n_sites] if self.ref_level_ is None else B[self.ref_level_]
            s = np.subtract(Xb, gm, out=resid)
            tmp = ws.get("tmp", c)
            if cov_o.shape[1]:
                s -= np.matmul(cov_o, B[n_sites:], out=tmp)
            s /= np.sqrt(vp)
            beta[:, sl], grand_mean[sl], var_pooled[sl] = B, gm, vp
            for i in range(n_sites):
                blk = s[edges[i] : edges[i + 1]]
                m = blk.mean(axis=0)
                dev = np.subtract(blk, m, out=tmp[edges[i] : edges[i + 1]])
                mean_s[i, sl] = m
                ss[i, sl] = np.einsum("ij,ij->j", dev, dev)
        return self._fit_from_moments(counts, mean_s, ss, beta, grand_mean, var_pooled, constant)

    def _check_feature_count(self, p: int) -> None:
        if not self.parametric and self.eb and p > self.max_nonparametric_features:
            raise HarmonizationError(
                f"parametric=False is O(n_features^2): {p} features exceed "
                f"max_nonparametric_features={self.max_nonparametric_features}"
            )

    def _fit_from_moments(
        self,
        counts: np.ndarray,
        mean_s: np.ndarray,
        ss: np.ndarray,
        beta: np.ndarray,
        grand_mean: np.ndarray,
        var_pooled: np.ndarray,
        constant: np.ndarray,
    ) -> ComBat:
        """Finish a fit from per-site moments of the standardized data (``sites_``,
        ``ref_level_`` and ``encoding_`` set): L/S estimates, priors and EB adjustments.

        ``mean_s``, ``ss`` (n_sites, n_features) are each site's mean and centred sum of squares
        of :math:`s_{kv}`; the map-reduce and distributed fits (:mod:`._moments`) call this too,
        so every fit shares one EB code path.
        """
        self._set_standardization(counts, beta, grand_mean, var_pooled, constant)
        gamma_hat, delta_hat = ls_estimates(counts, mean_s, ss, self.ref_level_, self.mean_only)
        self.gamma_hat_, self.delta_hat_ = gamma_hat, delta_hat
        priors = merge_prior_sums(
            [prior_sums(gamma_hat, delta_hat, constant, self.ref_level_)], self.mean_only
        )
        self.priors_ = [None if pr is None else vars(pr) for pr in priors]
        self.gamma_star_, self.delta_star_, _ = adjust(
            gamma_hat, delta_hat, mean_s, ss, constant, counts, priors, EBOptions.of(self)
        )
        return self

    def _set_standardization(
        self,
        counts: np.ndarray,
        beta: np.ndarray,
        grand_mean: np.ndarray,
        var_pooled: np.ndarray,
        constant: np.ndarray,
    ) -> None:
        """Set the fitted coefficients, grand mean, pooled variance, constant features and
        subjects per site (``sites_`` set), refusing data whose features are all constant."""
        self.n_features_in_ = grand_mean.shape[0]
        self.beta_, self.grand_mean_, self.var_pooled_ = beta, grand_mean, var_pooled
        self.constant_features_ = constant
        self.feature_mask_hash_ = _hash_mask(~constant)
        self.site_counts_ = {s: int(c) for s, c in zip(self.sites_, counts, strict=True)}
        if constant.any():
            log.info("%d constant feature(s) pass through unchanged", int(constant.sum()))
        if constant.all():
            raise HarmonizationError("X has only constant features: nothing to harmonize")

    # ------------------------------------------------------------------ transform
    def _standardize(self, Xb: np.ndarray, sl: slice, cov_part: np.ndarray) -> np.ndarray:
        n_sites = self.gamma_hat_.shape[0] - self._n_added
        gm = self.grand_mean_[sl]
        return (Xb - gm - cov_part @ self.beta_[n_sites:, sl]) / np.sqrt(self.var_pooled_[sl])

    @property
    def _n_added(self) -> int:
        return len(getattr(self, "added_sites_", []))

    def transform(
        self,
        X: Any,
        batch: Sequence[Any],
        covariates: pd.DataFrame | None = None,
        out: np.ndarray | None = None,
    ) -> Any:
        """Harmonize subjects of fitted sites with the fitted model (no refit).

        A subject gets exactly the values it got in :meth:`fit_transform`. Subjects of the
        reference site and constant features are returned unchanged.

        Parameters
        ----------
        X : array-like, numpy.memmap or dask array of shape (n_subjects, n_features)
        batch : sequence of length n_subjects
            Sites, each seen in :meth:`fit` or added by :meth:`add_sites`.
        covariates : DataFrame, optional
            Same columns as in :meth:`fit`.
        out : ndarray, optional
            Where to write the result (e.g. a writable ``numpy.memmap``).

        Returns
        -------
        ndarray, or a lazy dask array for dask input (without ``out``).
        """
        check_is_fitted(self, "gamma_star_")
        source = FeatureBlocks(X, self.block_features)
        if source.n_features != self.n_features_in_:
            raise HarmonizationError(
                f"X has {source.n_features} features but ComBat was fitted with "
                f"{self.n_features_in_}"
            )
        n = source.n_subjects
        idx = site_index(check_batch(batch, n), self.sites_)
        n_fit_sites = len(self.sites_) - self._n_added
        cov_part = self.encoding_.transform(covariates, n)
        keep_rows = idx != self.ref_level_ if self.ref_level_ is not None else None

        def _adjust(
            Xb: np.ndarray, start: int, stop: int, rows: np.ndarray, ws: Workspace | None
        ) -> np.ndarray:
            # x* = (x - A - sqrt(vp) gamma*[site]) / sqrt(delta*[site]) + A,  A = alpha + C beta
            def buf(name: str) -> np.ndarray:
                return np.empty_like(Xb) if ws is None else ws.get(name, stop - start)

            sl = slice(start, stop)
            site = idx[rows]
            sd = np.sqrt(self.var_pooled_[sl])
            shift = self.gamma_star_[:, sl] * sd
            inv_scale = 1.0 / np.sqrt(self.delta_star_[:, sl])
            A = np.matmul(cov_part[rows], self.beta_[n_fit_sites:, sl], out=buf("offset"))
            A += self.grand_mean_[sl]
            out_b = np.subtract(Xb, A, out=buf("result"))
            tmp = buf("tmp")
            out_b -= np.take(shift, site, axis=0, out=tmp, mode="clip")
            out_b *= np.take(inv_scale, site, axis=0, out=tmp, mode="clip")
            out_b += A
            const = self.constant_features_[sl]
            if const.any():
                out_b[:, const] = Xb[:, const]
            if keep_rows is not None:
                ref = ~keep_rows[rows]
                out_b[ref] = Xb[ref]
            return out_b

        progress = None
        if self.progress and not (is_dask(X) and out is None):

            def progress(it: Any) -> Any:
                return self._bar(it, source.n_blocks, "ComBat transform")

        return map_feature_blocks(source, _adjust, out=out, progress=progress)

    def fit_transform(
        self,
        X: Any,
        batch: Sequence[Any],
        covariates: pd.DataFrame | None = None,
        out: np.ndarray | None = None,
    ) -> Any:
        """:meth:`fit` then :meth:`transform` on the same subjects."""
        return self.fit(X, batch, covariates).transform(X, batch, covariates, out=out)

    # ------------------------------------------------------------------ unseen sites
    def add_sites(
        self,
        X: Any,
        batch: Sequence[Any],
        covariates: pd.DataFrame | None = None,
        priors: str = "frozen",
    ) -> ComBat:
        """Estimate the location/scale of sites unseen in :meth:`fit`, everything else frozen.

        The coefficients, grand mean and pooled variance are not refitted; each new site's
        :math:`\\hat\\gamma, \\hat\\delta^2` are estimated from its standardized data and shrunk
        with the priors: ``"frozen"`` uses the average of the training sites' hyperparameters,
        ``"site"`` estimates the new site's own hyperparameters over features (as ComBat does for
        a training site).

        Parameters
        ----------
        X : array-like of shape (n_subjects, n_features)
            Subjects of the new site(s) only.
        batch : sequence of length n_subjects
            New site labels (each with at least ``min_new_site_subjects`` subjects).
        covariates : DataFrame, optional
            Same columns as in :meth:`fit`.
        priors : {"frozen", "site"}, default="frozen"
        """
        check_is_fitted(self, "gamma_star_")
        if priors not in ("frozen", "site"):
            raise HarmonizationError(f"priors must be 'frozen' or 'site', got {priors!r}")
        source = FeatureBlocks(X, self.block_features)
        if source.n_features != self.n_features_in_:
            raise HarmonizationError(
                f"X has {source.n_features} features but ComBat was fitted with "
                f"{self.n_features_in_}"
            )
        n = source.n_subjects
        labels = check_batch(batch, n)
        new_sites = site_levels(labels)
        idx = site_index(labels, new_sites)
        counts = np.bincount(idx, minlength=len(new_sites))
        self._check_new_sites(new_sites, counts)
        cov_part = self.encoding_.transform(covariates, n)
        m = len(new_sites)
        p = self.n_features_in_
        mean_s = np.empty((m, p))
        ss = np.empty((m, p))
        members = [np.where(idx == i)[0] for i in range(m)]
        for start, stop in self._bar(source.bounds(), source.n_blocks, "ComBat add_sites"):
            sl = slice(start, stop)
            s = self._standardize(source.read(start, stop), sl, cov_part)
            for i, rows in enumerate(members):
                mean_s[i, sl] = s[rows].mean(axis=0)
                ss[i, sl] = ((s[rows] - mean_s[i, sl]) ** 2).sum(axis=0)
        return self._add_sites_from_moments(new_sites, counts, mean_s, ss, priors)

    def _check_new_sites(self, new_sites: list[Any], counts: np.ndarray) -> None:
        known = [str(s) for s in new_sites if s in self.sites_]
        if known:
            raise UnseenSiteError(f"add_sites got site(s) already in the model: {', '.join(known)}")
        few = [
            f"{s} ({c})"
            for s, c in zip(new_sites, counts, strict=True)
            if c < max(2, self.min_new_site_subjects)
        ]
        if few:
            raise UnseenSiteError(
                f"unseen site(s) with too few subjects: {', '.join(few)}; "
                f"min_new_site_subjects={self.min_new_site_subjects}"
            )

    def _add_sites_from_moments(
        self,
        new_sites: list[Any],
        counts: np.ndarray,
        mean_s: np.ndarray,
        ss: np.ndarray,
        priors: str,
    ) -> ComBat:
        """Append unseen sites from the moments of their data standardized with the frozen
        model (shared by :meth:`add_sites` and the map-reduce / distributed paths)."""
        m, p = mean_s.shape
        delta_hat = ss / (counts[:, None] - 1.0)
        if self.mean_only:
            delta_hat = np.ones_like(delta_hat)
        delta_hat[delta_hat == 0] = 1.0
        gamma_star = np.zeros((m, p))
        delta_star = np.ones((m, p))
        keep = ~self.constant_features_
        trained = [pr for pr in self.priors_ if pr is not None]
        frozen = _eb.Priors(**{k: float(np.mean([pr[k] for pr in trained])) for k in trained[0]})
        new_priors = []
        for i in range(m):
            pr = (
                frozen
                if priors == "frozen"
                else _eb.fit_priors(mean_s[i, keep], delta_hat[i, keep], self.mean_only)
            )
            new_priors.append(vars(pr))
            gamma_star[i, keep], delta_star[i, keep], _ = adjust_site(
                mean_s[i, keep],
                delta_hat[i, keep],
                mean_s[i, keep],
                ss[i, keep],
                int(counts[i]),
                pr,
                EBOptions.of(self),
            )
        self.added_sites_ = [*getattr(self, "added_sites_", []), *new_sites]
        self.sites_ = [*self.sites_, *new_sites]
        self.gamma_hat_ = np.vstack([self.gamma_hat_, mean_s])
        self.delta_hat_ = np.vstack([self.delta_hat_, delta_hat])
        self.gamma_star_ = np.vstack([self.gamma_star_, gamma_star])
        self.delta_star_ = np.vstack([self.delta_star_, delta_star])
        self.priors_ = [*self.priors_, *new_priors]
        self.site_counts_ = {
            **self.site_counts_,
            **{s: int(c) for s, c in zip(new_sites, counts, strict=True)},
        }
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: Any) -> Any:
        """Write the model to ``path`` (``.npz``) and a JSON sidecar; see :func:`save_model`."""
        from pipeline.gauge._persist import save_model

        return save_model(self, path)

    @classmethod
    def load(cls, path: Any) -> ComBat:
        """Read a model written by :meth:`save`; see :func:`load_model`."""
        from pipeline.gauge._persist import load_model

        return load_model(path, cls)
