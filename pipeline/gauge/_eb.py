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


@dataclass
class Priors:
    """Hyperparameters of one site's priors (``a``, ``b`` are ``nan`` when ``mean_only``)."""

    gamma_bar: float
    t2: float
    a: float
    b: float


def fit_priors(gamma_hat: np.ndarray, delta_hat: np.ndarray, mean_only: bool) -> Priors:
    """Method-of-moments hyperparameters of one site, over the features given."""
    gamma_bar = float(np.mean(gamma_hat))
    t2 = float(np.var(gamma_hat, ddof=1))
    if mean_only:
        return Priors(gamma_bar, t2, math.nan, math.nan)
    m = np.mean(delta_hat)
    s2 = np.var(delta_hat, ddof=1)
    a = (2 * s2 + m**2) / float(s2)
    b = (m * s2 + m**3) / s2
    return Priors(gamma_bar, t2, float(a), float(b))


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
    conv: float = CONV,
    max_iter: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Parametric EB adjustments of one site (all features at once).

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
        Location only (scale fixed to one), as in neuroCombat (``n = d = 1`` in the posterior).
    """
    if mean_only:
        g = postmean(gamma_hat, priors.gamma_bar, 1, 1, priors.t2)
        return g, np.ones_like(gamma_hat)
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    change, count = 1.0, 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while change > conv:
            g_new = postmean(gamma_hat, priors.gamma_bar, n, d_old, priors.t2)
            sum2 = ss + n * (mean - g_new) ** 2
            d_new = postvar(sum2, n, priors.a, priors.b)
            # exactly neuroCombat's rule (signed denominators, Python's max and its NaN handling)
            change = max((abs(g_new - g_old) / g_old).max(), (abs(d_new - d_old) / d_old).max())
            g_old, d_old = g_new, d_new
            count += 1
            if count >= max_iter:
                log.warning("EB iteration stopped after %d iterations (change %.3g)", count, change)
                break
    log.debug("parametric EB converged in %d iterations", count)
    return g_new, d_new


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
