r"""Paired comparisons of two models' per-subject correctness, shared by the seed's grids.

Both grids (:mod:`benchmarks.symmetry_grid` on volumes, :mod:`benchmarks.roiset_grid` on
networks) answer each of the seed's findings the same way: the per-subject difference of
correctness of two models evaluated on the same subjects, trained on the same splits, and a
95% bootstrap confidence interval of its mean. A finding *holds* when the CI excludes 0 on the
predicted side, is *reversed* when it excludes 0 on the other, shows *no effect* when the CI lies
within ±``margin`` (equivalence), and is *inconclusive* otherwise.

Two layouts of the correctness arrays:

- ``(subjects,)``: the subjects are the units (the network grid, where every seed tests the same
  subjects and correctness is averaged over seeds first);
- ``(seeds, subjects)``: each seed has its own training and test subjects (the volume grid), so
  the bootstrap is two-stage: seeds with replacement, then subjects within each drawn seed. The
  interval then carries the training variability between seeds as well as the test sampling.

Written here rather than taken from scipy: :func:`scipy.stats.bootstrap` has no two-stage
(clustered) resampling.
"""

from __future__ import annotations

import math

import numpy as np

#: half-width of the equivalence band of a "no effect" verdict (accuracy)
MARGIN = 0.03


def paired_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 5000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of the per-subject difference ``a - b`` and its 95% bootstrap CI.

    Parameters
    ----------
    a, b : ndarray
        Correctness (0/1, or averaged over seeds) of two models on the same subjects, shape
        ``(subjects,)``, or ``(seeds, subjects)`` for a two-stage bootstrap (seeds, then subjects
        within each seed).
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.

    Returns
    -------
    tuple of float
        ``(mean, low, high)``.

    Examples
    --------
    >>> a, b = np.ones(200), np.r_[np.ones(100), np.zeros(100)]
    >>> mean, lo, hi = paired_ci(a, b)
    >>> round(mean, 2), lo > 0.4, hi < 0.6
    (0.5, True, True)
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    if d.ndim == 1:
        boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    else:
        k, n = d.shape
        seeds = rng.integers(0, k, (n_boot, k))
        subjects = rng.integers(0, n, (n_boot, k, n))
        boots = d[seeds[..., None], subjects].mean(axis=(1, 2))
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def verdict(mean: float, lo: float, hi: float, margin: float = MARGIN) -> str:
    """``holds`` / ``reversed`` (the CI excludes 0), ``no effect`` (the CI lies within
    ±``margin``), else ``inconclusive``.

    Examples
    --------
    >>> verdict(0.1, 0.05, 0.15), verdict(0.0, -0.01, 0.02), verdict(0.0, -0.05, 0.06)
    ('holds', 'no effect (CI within ±0.03)', 'inconclusive')
    """
    if lo > 0:
        return "holds"
    if hi < 0:
        return "reversed (the CI excludes 0 on the other side)"
    if -margin <= lo and hi <= margin:
        return f"no effect (CI within ±{margin})"
    return "inconclusive"


def half_width(sd_seed: float, sd_subject: float, seeds: int, subjects: int) -> float:
    r"""Expected 95% CI half-width of a mean paired difference over ``seeds`` × ``subjects``.

    :math:`1.96\sqrt{\sigma_s^2/k + \sigma_d^2/(k n)}`, with :math:`\sigma_s` the sd of the
    seed-level mean difference beyond test sampling and :math:`\sigma_d` the sd of the
    per-subject difference.

    Examples
    --------
    >>> round(half_width(0.0, 0.45, 1, 600), 3)
    0.036
    """
    return 1.96 * math.sqrt(sd_seed**2 / seeds + sd_subject**2 / (seeds * subjects))


def seeds_needed(sd_seed: float, sd_subject: float, subjects: int, target: float) -> int:
    """Smallest number of seeds whose expected CI half-width (:func:`half_width`) is ``target``.

    Examples
    --------
    >>> seeds_needed(0.03, 0.5, 200, 0.04)
    6
    """
    var = sd_seed**2 + sd_subject**2 / subjects
    return max(1, math.ceil(var * (1.96 / target) ** 2))
