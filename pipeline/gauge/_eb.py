"""Empirical-Bayes location/scale estimates of ComBat, on per-feature sufficient statistics.

For one site with :math:`n` subjects and standardized data :math:`s_{kv}` (subject :math:`k`,
feature :math:`v`), the L/S estimates are :math:`\\hat\\gamma_v` and
:math:`\\hat\\delta^2_v = \\frac{1}{n-1}\\sum_k (s_{kv}-\\bar s_v)^2`. The priors are
:math:`\\gamma_v \\sim N(\\bar\\gamma, \\tau^2)` and :math:`\\delta^2_v \\sim \\Gamma^{-1}(a, b)`
with method-of-moments hyperparameters over features (Johnson et al. 2007):

.. math::

    \\bar\\gamma = \\operatorname{mean}_v \\hat\\gamma_v,\\quad
    \\tau^2 = \\operatorname{var}_v \\hat\\gamma_v,\\quad
    a = \\frac{2 s^2 + m^2}{s^2},\\quad b = \\frac{m s^2 + m^3}{s^2}

(:math:`m, s^2` the mean and variance of :math:`\\hat\\delta^2_v` over features). The parametric
posterior is the fixed point of

.. math::

    \\gamma^*_v = \\frac{n\\tau^2\\hat\\gamma_v + \\delta^{*2}_v\\bar\\gamma}
                      {n\\tau^2 + \\delta^{*2}_v},
    \\qquad
    \\delta^{*2}_v = \\frac{\\tfrac12\\sum_k (s_{kv}-\\gamma^*_v)^2 + b}{n/2 + a - 1},

iterated until the largest relative change **over all features** is below ``conv`` — neuroCombat's
stopping rule, kept global so that chunked and in-memory fits agree. Every quantity needs only the
per-feature sums :math:`\\bar s_v` and :math:`SS_v = \\sum_k (s_{kv}-\\bar s_v)^2`, because
:math:`\\sum_k (s_{kv}-g)^2 = SS_v + n(\\bar s_v - g)^2`; so the iteration never touches the data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: neuroCombat's convergence threshold of the parametric iteration
CONV = 1e-4
#: most iterations of the parametric EB
MAX_ITER = 10_000


@dataclass
class Priors:
    """Hyperparameters of one site's priors (``a``, ``b`` are ``nan`` when ``mean_only``)."""

    gamma_bar: float
    t2: float
    a: float
    b: float


@dataclass
class PriorSums:
    """Count, mean and centred sum of squares over features of one site's L/S estimates.

    Feature blocks merge with Chan's pairwise update, so the hyperparameters of a fit done one
    block at a time equal those of the whole fit to rounding.
    """

    n: int
    g_mean: float
    g_m2: float
    d_mean: float
    d_m2: float

    @classmethod
    def of(cls, gamma_hat: np.ndarray, delta_hat: np.ndarray) -> PriorSums:
        """The sums over the features given (``np.mean`` and ``np.var``'s own arithmetic)."""
        n = int(gamma_hat.size)
        if n == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        g_mean, d_mean = np.mean(gamma_hat), np.mean(delta_hat)
        g_dev, d_dev = gamma_hat - g_mean, delta_hat - d_mean
        return cls(n, g_mean, np.sum(g_dev * g_dev), d_mean, np.sum(d_dev * d_dev))

    def merge(self, other: PriorSums) -> PriorSums:
        """The sums over the union of two disjoint sets of features."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        w = self.n * other.n / n
        dg, dd = other.g_mean - self.g_mean, other.d_mean - self.d_mean
        return PriorSums(
            n,
            self.g_mean + dg * (other.n / n),
            self.g_m2 + other.g_m2 + w * dg * dg,
            self.d_mean + dd * (other.n / n),
            self.d_m2 + other.d_m2 + w * dd * dd,
        )


def priors_from_sums(sums: PriorSums, mean_only: bool) -> Priors:
    """Method-of-moments hyperparameters of one site from its :class:`PriorSums`."""
    gamma_bar = float(sums.g_mean)
    t2 = float(sums.g_m2 / (sums.n - 1))
    if mean_only:
        return Priors(gamma_bar, t2, math.nan, math.nan)
    m = np.float64(sums.d_mean)
    s2 = np.float64(sums.d_m2 / (sums.n - 1))
    a = (2 * s2 + m**2) / float(s2)
    b = (m * s2 + m**3) / s2
    return Priors(gamma_bar, t2, float(a), float(b))


def fit_priors(gamma_hat: np.ndarray, delta_hat: np.ndarray, mean_only: bool) -> Priors:
    """Method-of-moments hyperparameters of one site, over the features given."""
    return priors_from_sums(PriorSums.of(gamma_hat, delta_hat), mean_only)


def postmean(g_hat, g_bar, n, d_star, t2):
    """Posterior mean of the location."""
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def postvar(sum2, n, a, b):
    """Posterior mode of the scale."""
    return (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)


def parametric(
    gamma_hat: np.ndarray,
    delta_hat: np.ndarray,
    mean: np.ndarray,
    ss: np.ndarray,
    n: int,
    priors: Priors,
    mean_only: bool,
    iterations: int | None = None,
    conv: float = CONV,
    max_iter: int = MAX_ITER,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Parametric EB adjustments of one site, on the features given.

    Parameters
    ----------
    gamma_hat, delta_hat : ndarray of shape (n_features,)
        L/S estimates of the site.
    mean, ss : ndarray of shape (n_features,)
        Per-feature mean and centred sum of squares of the site's standardized data.
    n : int
        Number of subjects of the site.
    priors : Priors
        The site's hyperparameters.
    mean_only : bool
        Location only (scale fixed to one), as in neuroCombat (``n = d = 1`` in the posterior):
        closed form, no iteration.
    iterations : int, optional
        Run exactly this many iterations; default: until the largest relative change over the
        features given is below ``conv`` (or ``max_iter``).

    Returns
    -------
    gamma_star, delta_star : ndarray of shape (n_features,)
    changes : ndarray of shape (n_iterations, 2), or None when ``mean_only``
        Each iteration's largest relative change of the location and of the scale over the
        features given (``-inf`` when there are none, ``nan`` where neuroCombat's rule sees one):
        :func:`stop_count` applies the global stopping rule to the changes of feature blocks.
    """
    if mean_only:
        g = postmean(gamma_hat, priors.gamma_bar, 1, 1, priors.t2)
        return g, np.ones_like(gamma_hat), None
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    g_new, d_new = g_old, d_old
    changes = []
    change, count = 1.0, 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while change > conv if iterations is None else count < iterations:
            g_new = postmean(gamma_hat, priors.gamma_bar, n, d_old, priors.t2)
            sum2 = ss + n * (mean - g_new) ** 2
            d_new = postvar(sum2, n, priors.a, priors.b)
            g_change = np.max(abs(g_new - g_old) / g_old, initial=-np.inf)
            d_change = np.max(abs(d_new - d_old) / d_old, initial=-np.inf)
            # exactly neuroCombat's rule (signed denominators, Python's max and its NaN handling)
            change = max(g_change, d_change)
            changes.append((g_change, d_change))
            g_old, d_old = g_new, d_new
            count += 1
            if iterations is None and count >= max_iter:
                log.warning("EB iteration stopped after %d iterations (change %.3g)", count, change)
                break
    log.debug("parametric EB: %d iterations", count)
    return g_new, d_new, np.array(changes, dtype=np.float64).reshape(-1, 2)


def stop_count(
    changes: list[np.ndarray], conv: float = CONV, max_iter: int = MAX_ITER
) -> int | None:
    """The iteration at which :func:`parametric` on all features would stop, given the
    ``changes`` it reported on each block of them (all run for the same number of iterations);
    ``None`` if it would run on past them."""
    steps = min(c.shape[0] for c in changes)
    for t in range(steps):
        g_change = np.max([c[t, 0] for c in changes])
        d_change = np.max([c[t, 1] for c in changes])
        if not max(g_change, d_change) > conv or t + 1 >= max_iter:
            return t + 1
    return None


def nonparametric(
    gamma_hat: np.ndarray,
    delta_hat: np.ndarray,
    mean: np.ndarray,
    ss: np.ndarray,
    n: int,
    block_bytes: int = 64 << 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-parametric EB (Johnson 2007): likelihood-weighted average over the other features.

    .. math::

        L_{vw} = (2\\pi\\hat\\delta^2_w)^{-n/2}
                 \\exp\\!\\Big(-\\frac{SS_v + n(\\bar s_v-\\hat\\gamma_w)^2}
                                  {2\\hat\\delta^2_w}\\Big),
        \\quad
        \\gamma^*_v = \\frac{\\sum_{w\\ne v} \\hat\\gamma_w L_{vw}}{\\sum_{w\\ne v} L_{vw}}

    (same for :math:`\\delta^{*2}_v`), computed in log space (neuroCombat underflows to NaN for
    large sites) in blocks of rows, :math:`O(p^2)` time.
    """
    p = gamma_hat.shape[0]
    g_star = np.empty(p)
    d_star = np.empty(p)
    log_norm = -0.5 * n * np.log(2 * np.pi * delta_hat)
    rows = max(1, block_bytes // (8 * max(p, 1) * 3))
    for start in range(0, p, rows):
        stop = min(p, start + rows)
        sum2 = ss[start:stop, None] + n * (mean[start:stop, None] - gamma_hat[None, :]) ** 2
        loglh = log_norm[None, :] - sum2 / (2 * delta_hat[None, :])
        loglh[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # leave feature v out
        w = np.exp(loglh - loglh.max(axis=1, keepdims=True))
        total = w.sum(axis=1)
        g_star[start:stop] = (w @ gamma_hat) / total
        d_star[start:stop] = (w @ delta_hat) / total
    return g_star, d_star
