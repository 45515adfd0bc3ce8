"""ComBat's fit after the sufficient statistics, one block of features at a time.

Why this module exists: every ComBat fit here (in memory, map-reduce on dask, distributed across
sites) ends the same way — L/S estimates per site and feature, method-of-moments priors over
features, empirical-Bayes posteriors — and the map-reduce fit must run those steps on the
workers, block by block, so that no process holds per-feature arrays of every site and block at
once. The steps are therefore written on one block of features:

- :func:`ls_estimates` and :func:`adjust` are per feature;
- the priors are means and variances over features: each block reports :class:`PriorSums`
  (:func:`prior_sums`), which merge exactly like the moments do;
- the parametric iteration's stopping rule is global over features (neuroCombat's, kept so that
  every fit agrees): each block reports its per-iteration changes and
  :func:`pipeline.gauge._eb.stop_count` gives the iteration count the whole fit would stop at;
  the blocks then run exactly that many iterations, so their posteriors equal the one-block
  fit's.

The in-memory fit calls the same functions on a single block holding every feature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.gauge import _eb
from pipeline.gauge._design import site_design
from pipeline.gauge._eb import PriorSums
from pipeline.gauge._errors import HarmonizationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EBOptions:
    """The estimator parameters the L/S and EB steps use (picklable, for the workers)."""

    eb: bool
    parametric: bool
    mean_only: bool

    @classmethod
    def of(cls, estimator: Any) -> EBOptions:
        """The options of a :class:`~pipeline.gauge.ComBat`."""
        return cls(bool(estimator.eb), bool(estimator.parametric), bool(estimator.mean_only))

    @property
    def iterates(self) -> bool:
        """Whether the posteriors come from the parametric iteration (global stopping rule)."""
        return self.eb and self.parametric and not self.mean_only


def set_sites(estimator: Any, sites: list[Any], counts: np.ndarray) -> None:
    """Set ``sites_`` and ``ref_level_`` of ``estimator`` from the sorted site labels and their
    subject counts, refusing single-subject sites and unknown reference sites."""
    single = [str(s) for s, c in zip(sites, counts, strict=True) if c < 2]
    if single:
        raise HarmonizationError(
            f"batch has site(s) with a single subject: {', '.join(single)} "
            "(ComBat needs at least two subjects per site)"
        )
    estimator.sites_ = list(sites)
    if len(sites) < 2:
        log.warning("ComBat fitted on a single site: nothing to harmonize")
    ref = estimator.ref_batch
    if ref is None:
        estimator.ref_level_ = None
    elif ref in estimator.sites_:
        estimator.ref_level_ = estimator.sites_.index(ref)
    else:
        raise HarmonizationError(f"ref_batch {ref!r} is not one of the sites {estimator.sites_}")


def ls_estimates(
    counts: np.ndarray,
    mean_s: np.ndarray,
    ss: np.ndarray,
    ref_level: int | None,
    mean_only: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-site location/scale estimates ``(gamma_hat, delta_hat)`` of a block of features.

    Parameters
    ----------
    counts : ndarray of int, shape (n_sites,)
    mean_s, ss : ndarray of shape (n_sites, n_features)
        Each site's mean and centred sum of squares of the standardized data.
    ref_level : int or None
    mean_only : bool
    """
    n_sites = counts.shape[0]
    site_rows = site_design(np.arange(n_sites), n_sites, ref_level)
    site_gram_inv = np.linalg.inv(site_rows.T @ (counts[:, None] * site_rows))
    gamma_hat = site_gram_inv @ (site_rows.T @ (counts[:, None] * mean_s))
    delta_hat = ss / (counts[:, None] - 1.0)
    if mean_only:
        delta_hat = np.ones_like(delta_hat)
    delta_hat[delta_hat == 0] = 1.0  # neuroCombat's convert_zeroes
    return gamma_hat, delta_hat


def prior_sums(
    gamma_hat: np.ndarray, delta_hat: np.ndarray, constant: np.ndarray, ref_level: int | None
) -> list[PriorSums | None]:
    """Each site's :class:`PriorSums` over the non-constant features of a block (``None`` for
    the reference site, which gets no priors)."""
    keep = ~constant
    return [
        None if i == ref_level else PriorSums.of(gamma_hat[i, keep], delta_hat[i, keep])
        for i in range(gamma_hat.shape[0])
    ]


def merge_prior_sums(
    blocks: list[list[PriorSums | None]], mean_only: bool
) -> list[_eb.Priors | None]:
    """The priors of each site from the :func:`prior_sums` of every block."""
    priors: list[_eb.Priors | None] = []
    for per_site in zip(*blocks, strict=True):
        if per_site[0] is None:
            priors.append(None)
            continue
        total = per_site[0]
        for sums in per_site[1:]:
            total = total.merge(sums)
        priors.append(_eb.priors_from_sums(total, mean_only))
    return priors


def adjust_site(
    gamma_hat: np.ndarray,
    delta_hat: np.ndarray,
    mean_s: np.ndarray,
    ss: np.ndarray,
    n: int,
    priors: _eb.Priors,
    options: EBOptions,
    iterations: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(gamma*, delta*, changes)`` of one site from its sufficient statistics; ``changes``
    are the parametric iteration's (:func:`pipeline.gauge._eb.parametric`), else ``None``."""
    if not options.eb:
        return gamma_hat, delta_hat, None
    if options.parametric:
        return _eb.parametric(
            gamma_hat, delta_hat, mean_s, ss, n, priors, options.mean_only, iterations
        )
    if options.mean_only:
        delta_hat = np.ones_like(delta_hat)
    return (*_eb.nonparametric(gamma_hat, delta_hat, mean_s, ss, n), None)


def adjust(
    gamma_hat: np.ndarray,
    delta_hat: np.ndarray,
    mean_s: np.ndarray,
    ss: np.ndarray,
    constant: np.ndarray,
    counts: np.ndarray,
    priors: list[_eb.Priors | None],
    options: EBOptions,
    iterations: list[int | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """EB posteriors ``(gamma_star, delta_star)`` of every site on a block of features, and each
    site's iteration changes (see :func:`adjust_site`).

    Constant features and the reference site (``priors`` entry ``None``) keep ``gamma* = 0``,
    ``delta* = 1``. ``iterations`` fixes the parametric iteration count per site.
    """
    gamma_star = np.zeros_like(gamma_hat)
    delta_star = np.ones_like(delta_hat)
    keep = ~constant
    changes: list[np.ndarray | None] = []
    for i, pr in enumerate(priors):
        if pr is None:
            changes.append(None)
            continue
        g, d, steps = adjust_site(
            gamma_hat[i, keep],
            delta_hat[i, keep],
            mean_s[i, keep],
            ss[i, keep],
            int(counts[i]),
            pr,
            options,
            None if iterations is None else iterations[i],
        )
        gamma_star[i, keep], delta_star[i, keep] = g, d
        changes.append(steps)
    return gamma_star, delta_star, changes


@dataclass
class Standardized:
    """A block's coefficients, grand mean, pooled variance and constant features, and each
    site's mean ``mean_s`` and centred sum of squares ``ss`` of the standardized data."""

    beta: np.ndarray
    grand_mean: np.ndarray
    var_pooled: np.ndarray
    mean_s: np.ndarray
    ss: np.ndarray
    constant: np.ndarray


@dataclass
class BlockFit(Standardized):
    """The fit of one block of features: its :class:`Standardized` quantities, then the L/S
    estimates and (once :meth:`with_posteriors` ran) the EB posteriors and iteration changes."""

    counts: np.ndarray
    ref_level: int | None
    options: EBOptions
    gamma_hat: np.ndarray | None = None
    delta_hat: np.ndarray | None = None
    gamma_star: np.ndarray | None = None
    delta_star: np.ndarray | None = None
    changes: list[np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        if self.gamma_hat is None:
            self.gamma_hat, self.delta_hat = ls_estimates(
                self.counts, self.mean_s, self.ss, self.ref_level, self.options.mean_only
            )

    def prior_sums(self) -> tuple[int, list[PriorSums | None]]:
        """Constant features of the block, and each site's :class:`PriorSums`."""
        return int(self.constant.sum()), prior_sums(
            self.gamma_hat, self.delta_hat, self.constant, self.ref_level
        )

    def own_iterations(self, priors: list[_eb.Priors | None]) -> list[int | None]:
        """Per site, the iterations the parametric EB runs on this block alone."""
        changes = self.with_posteriors(priors).changes or []
        return [None if c is None else int(c.shape[0]) for c in changes]

    def with_posteriors(
        self, priors: list[_eb.Priors | None], iterations: list[int | None] | None = None
    ) -> BlockFit:
        """A copy (sharing the arrays) with the EB posteriors of this block (each site iterated
        ``iterations`` times, default as often as this block alone needs)."""
        g, d, changes = adjust(
            self.gamma_hat,
            self.delta_hat,
            self.mean_s,
            self.ss,
            self.constant,
            self.counts,
            priors,
            self.options,
            iterations,
        )
        return BlockFit(**{**vars(self), "gamma_star": g, "delta_star": d, "changes": changes})

    def iteration_changes(self) -> list[np.ndarray | None]:
        """The parametric iteration's changes per site (small: iterations × 2)."""
        return list(self.changes or [])

    def fields(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The arrays ``names`` (to gather into the model)."""
        return {k: getattr(self, k) for k in names}
