"""ComBat from per-site sufficient statistics: the algebra shared by map-reduce and distributed fits.

Why this module exists: ComBat's published implementations (neuroCombat, neuroHarmonize, the R
``sva`` package) need every subject's values in one matrix, and no harmonization package offers
the distributed fit of Chen et al. (NeuroImage 2022); their reference code
(andy1764/Distributed-ComBat) is research code exchanged as pickles. Here the whole fit is
rewritten on a handful of additive statistics, so one code path serves a dask map-reduce over
blocks of subjects and features (:mod:`._mapreduce`) and a consortium whose sites never pool
their data (:mod:`._distributed`).

For site :math:`i` with :math:`n_i` subjects, features :math:`x_k` and encoded covariates
:math:`c_k`, the statistics are the site means and the *within-site centred* cross-products

.. math::

    \\bar x_i,\\quad S^{xx}_i = \\sum_k (x_k-\\bar x_i)^{\\circ 2},\\quad
    \\bar c_i,\\quad S^{cc}_i = \\sum_k (c_k-\\bar c_i)(c_k-\\bar c_i)^\\top,\\quad
    S^{cx}_i = \\sum_k (c_k-\\bar c_i)(x_k-\\bar x_i)^\\top .

ComBat's design has one indicator column per site, so by Frisch–Waugh–Lovell its covariate
coefficients are the within-site estimator and everything else follows per feature:

.. math::

    \\hat\\beta = \\Big(\\sum_i S^{cc}_i\\Big)^{-1} \\sum_i S^{cx}_i,\\quad
    b_i = \\bar x_i - \\bar c_i^\\top \\hat\\beta,\\quad
    RSS_i = S^{xx}_i - 2\\hat\\beta^\\top S^{cx}_i + \\hat\\beta^\\top S^{cc}_i \\hat\\beta,

:math:`\\hat\\alpha = \\sum_i \\tfrac{n_i}{n} b_i` (or the reference site's :math:`b`),
:math:`\\hat\\sigma^2 = \\sum_i RSS_i / n` (or the reference site's :math:`RSS/n`), and the
standardized data of site :math:`i` have mean :math:`(b_i - \\hat\\alpha)/\\hat\\sigma` and centred
sum of squares :math:`RSS_i/\\hat\\sigma^2` — exactly what the empirical-Bayes step needs
(:meth:`ComBat._fit_from_moments`). Blocks of subjects merge with Chan's pairwise update, which
keeps the statistics centred (no :math:`\\sum x^2 - n\\bar x^2` cancellation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.gauge._blockfit import Standardized, set_sites
from pipeline.gauge._design import CovariateEncoding, site_levels
from pipeline.gauge._errors import CovariateError, HarmonizationError

if TYPE_CHECKING:
    from pipeline.gauge._combat import ComBat

log = logging.getLogger(__name__)


@dataclass
class SiteMoments:
    """Centred sufficient statistics of one site's subjects (all or a block of features).

    Attributes
    ----------
    n : int
        Subjects.
    mean, sxx : ndarray of shape (n_features,)
        Feature means and centred sums of squares.
    cmean : ndarray of shape (n_columns,)
        Means of the encoded covariate columns.
    scc : ndarray of shape (n_columns, n_columns)
        Centred covariate cross-products.
    scx : ndarray of shape (n_columns, n_features)
        Centred covariate–feature cross-products.
    const : ndarray of bool, shape (n_features,)
        Features with one value over the site's subjects.
    value : ndarray of shape (n_features,)
        That value where ``const`` (0 elsewhere); it equals the site mean.
    """

    n: int
    mean: np.ndarray
    sxx: np.ndarray
    cmean: np.ndarray
    scc: np.ndarray
    scx: np.ndarray
    const: np.ndarray
    value: np.ndarray

    @classmethod
    def from_rows(cls, X: np.ndarray, C: np.ndarray) -> SiteMoments:
        """Statistics of the rows ``X`` (float64, finite) with covariate rows ``C``."""
        mean = X.mean(axis=0)
        dev = X - mean
        cmean = C.mean(axis=0)
        cdev = C - cmean
        const = np.ptp(X, axis=0) == 0
        return cls(
            n=int(X.shape[0]),
            mean=mean,
            sxx=np.einsum("ij,ij->j", dev, dev),
            cmean=cmean,
            scc=cdev.T @ cdev,
            scx=cdev.T @ dev,
            const=const,
            value=np.where(const, X[0], 0.0),
        )

    def merge(self, other: SiteMoments) -> SiteMoments:
        """Statistics of the union of two disjoint sets of subjects (Chan et al. 1979)."""
        n = self.n + other.n
        w = self.n * other.n / n
        d = other.mean - self.mean
        dc = other.cmean - self.cmean
        const = self.const & other.const & (self.value == other.value)
        return SiteMoments(
            n=n,
            mean=self.mean + d * (other.n / n),
            sxx=self.sxx + other.sxx + w * d * d,
            cmean=self.cmean + dc * (other.n / n),
            scc=self.scc + other.scc + w * np.outer(dc, dc),
            scx=self.scx + other.scx + w * np.outer(dc, d),
            const=const,
            value=np.where(const, self.value, 0.0),
        )

    def project(self, have: Sequence[str], want: Sequence[str]) -> SiteMoments:
        """The statistics for covariate columns ``want`` (a column this site lacks, such as a
        category level none of its subjects has, is identically zero here)."""
        index = {name: j for j, name in enumerate(have)}
        S = np.zeros((len(have), len(want)))
        for k, name in enumerate(want):
            if name in index:
                S[index[name], k] = 1.0
        return SiteMoments(
            n=self.n,
            mean=self.mean,
            sxx=self.sxx,
            cmean=S.T @ self.cmean,
            scc=S.T @ self.scc @ S,
            scx=S.T @ self.scx,
            const=self.const,
            value=self.value,
        )

    @staticmethod
    def concat(parts: Sequence[SiteMoments]) -> SiteMoments:
        """Join statistics of consecutive feature blocks (same subjects)."""
        first = parts[0]
        return SiteMoments(
            n=first.n,
            mean=np.concatenate([p.mean for p in parts]),
            sxx=np.concatenate([p.sxx for p in parts]),
            cmean=first.cmean,
            scc=first.scc,
            scx=np.concatenate([p.scx for p in parts], axis=1),
            const=np.concatenate([p.const for p in parts]),
            value=np.concatenate([p.value for p in parts]),
        )

    @property
    def n_features(self) -> int:
        """Number of features."""
        return int(self.mean.shape[0])


Moments = dict[int, SiteMoments]


def block_moments(X: np.ndarray, codes: np.ndarray, C: np.ndarray) -> Moments:
    """Statistics of one block per site code present in it (``codes`` of its rows)."""
    out: Moments = {}
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        out[int(code)] = SiteMoments.from_rows(X[rows], C[rows])
    return out


def merge_moments(a: Mapping[int, SiteMoments], b: Mapping[int, SiteMoments]) -> Moments:
    """Statistics of two disjoint blocks of subjects (same features), site by site."""
    out = dict(a)
    for code, m in b.items():
        out[code] = out[code].merge(m) if code in out else m
    return out


def concat_moments(parts: Sequence[Mapping[int, SiteMoments]]) -> Moments:
    """Join per-site statistics of consecutive feature blocks."""
    return {code: SiteMoments.concat([p[code] for p in parts]) for code in parts[0]}


def _rss(m: SiteMoments, beta: np.ndarray) -> np.ndarray:
    """Residual sum of squares of one site around its own fitted line (per feature)."""
    if beta.shape[0] == 0:
        return m.sxx.copy()
    quad = np.einsum("qp,qr,rp->p", beta, m.scc, beta)
    rss = m.sxx - 2.0 * np.einsum("qp,qp->p", beta, m.scx) + quad
    return np.maximum(rss, 0.0)


@dataclass
class FitHeader:
    """What every feature block of a fit shares (a few numbers per site).

    Attributes
    ----------
    order : list of int
        Positions, in the statistics given to :func:`fit_header`, of the sites in sorted order.
    counts : ndarray of int, shape (n_sites,)
        Subjects per site, sorted order.
    ref_level : int or None
        The reference site's position.
    scc : ndarray of shape (n_columns, n_columns)
        Within-site covariate cross-products summed over sites.
    """

    order: list[int]
    counts: np.ndarray
    ref_level: int | None
    scc: np.ndarray


def fit_header(
    estimator: ComBat,
    sites: Sequence[Any],
    moments: Sequence[SiteMoments],
    encoding: CovariateEncoding,
    n_features: int,
) -> FitHeader:
    """Check the sites and the design and set ``sites_``, ``ref_level_`` and ``encoding_`` of
    ``estimator``; arguments as in :func:`fit_from_moments`, but the statistics need not hold
    any feature (only ``n``, ``cmean`` and ``scc`` are read), hence ``n_features``."""
    labels = list(sites)
    if len(set(labels)) != len(labels):
        raise HarmonizationError(f"site statistics repeat a site: {labels}")
    order = site_levels(np.asarray(labels, dtype=object))
    position = {label: k for k, label in enumerate(labels)}
    positions = [position[s] for s in order]
    counts = np.array([moments[k].n for k in positions], dtype=np.int64)
    set_sites(estimator, list(order), counts)
    estimator.encoding_ = encoding
    estimator._check_feature_count(n_features)
    q = len(encoding.columns)
    scc = sum((moments[k].scc for k in positions), np.zeros((q, q)))
    if q:
        rank = np.linalg.matrix_rank(scc)
        if rank < q:
            raise CovariateError(
                f"covariates {encoding.names} are collinear with the sites or each other "
                f"(within-site covariate rank {rank} < {q} columns)"
            )
    return FitHeader(positions, counts, estimator.ref_level_, scc)


def standardize(ms: Sequence[SiteMoments], header: FitHeader) -> Standardized:
    """The fit's per-feature quantities on one block of features, from its sites' statistics
    (in sorted site order, see :attr:`FitHeader.order`)."""
    counts = header.counts
    widths = {m.n_features for m in ms}
    if len(widths) != 1:
        raise HarmonizationError(f"site statistics have different feature counts: {sorted(widths)}")
    p = widths.pop()
    if header.scc.shape[0]:
        beta_cov = np.linalg.solve(header.scc, sum(m.scx for m in ms))
    else:
        beta_cov = np.zeros((0, p))
    b = np.stack([m.mean - m.cmean @ beta_cov for m in ms])  # per-site intercepts
    rss = np.stack([_rss(m, beta_cov) for m in ms])
    n = counts.sum()
    r = header.ref_level
    if r is None:
        grand_mean = (counts / float(n)) @ b
        var_pooled = rss.sum(axis=0) / n
        site_rows = b
    else:
        grand_mean = b[r].copy()
        var_pooled = rss[r] / counts[r]
        site_rows = b - b[r]
        site_rows[r] = b[r]
    var_pooled[var_pooled == 0] = 1.0
    sd = np.sqrt(var_pooled)
    constant = np.logical_and.reduce([m.const for m in ms]) & np.all(
        [m.value == ms[0].value for m in ms], axis=0
    )
    return Standardized(
        beta=np.vstack([site_rows, beta_cov]),
        grand_mean=grand_mean,
        var_pooled=var_pooled,
        mean_s=(b - grand_mean) / sd,
        ss=rss / var_pooled,
        constant=constant,
    )


def fit_from_moments(
    estimator: ComBat,
    sites: Sequence[Any],
    moments: Sequence[SiteMoments],
    encoding: CovariateEncoding,
) -> ComBat:
    """Fit ``estimator`` (an unfitted :class:`~pipeline.gauge.ComBat`, its parameters are used)
    from the statistics of each site, given in ``encoding.columns`` coordinates.

    Parameters
    ----------
    estimator : ComBat
    sites : sequence
        Site labels, one per entry of ``moments`` (any order, no repeats).
    moments : sequence of SiteMoments
    encoding : CovariateEncoding
        The covariate encoding the statistics were computed with.

    Returns
    -------
    ComBat
        ``estimator``, fitted: equal to ``estimator.fit`` on the pooled data (rounding aside).
    """
    header = fit_header(estimator, sites, moments, encoding, moments[0].n_features)
    std = standardize([moments[k] for k in header.order], header)
    return estimator._fit_from_moments(
        header.counts,
        std.mean_s,
        std.ss,
        std.beta,
        std.grand_mean,
        std.var_pooled,
        std.constant,
    )


def add_sites_from_moments(
    model: ComBat,
    sites: Sequence[Any],
    moments: Sequence[SiteMoments],
    priors: str = "frozen",
) -> ComBat:
    """Add sites unseen in the fit to ``model`` from their statistics (``model.encoding_``
    coordinates), as :meth:`ComBat.add_sites` does from their data."""
    if priors not in ("frozen", "site"):
        raise HarmonizationError(f"priors must be 'frozen' or 'site', got {priors!r}")
    order = site_levels(np.asarray(list(sites), dtype=object))
    by_label = dict(zip(sites, moments, strict=True))
    ms = [by_label[s] for s in order]
    bad = [m.n_features for m in ms if m.n_features != model.n_features_in_]
    if bad:
        raise HarmonizationError(
            f"unseen-site statistics have {bad[0]} features but ComBat was fitted with "
            f"{model.n_features_in_}"
        )
    counts = np.array([m.n for m in ms], dtype=np.int64)
    model._check_new_sites(list(order), counts)
    n_fit = len(model.sites_) - model._n_added
    beta_cov = model.beta_[n_fit:]
    sd = np.sqrt(model.var_pooled_)
    mean_s = np.stack([(m.mean - model.grand_mean_ - m.cmean @ beta_cov) / sd for m in ms])
    ss = np.stack([_rss(m, beta_cov) / model.var_pooled_ for m in ms])
    return model._add_sites_from_moments(list(order), counts, mean_s, ss, priors)


def total_subjects(moments: Iterable[SiteMoments]) -> int:
    """Subjects summed over sites."""
    return int(sum(m.n for m in moments))
