"""Fast checks of ``benchmarks/roiset_grid.py``: its planted effect, its symmetry and its verdicts.

The grid itself takes tens of minutes; these test what decides whether its numbers mean anything.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import roiset_grid as grid


@pytest.fixture(scope="module")
def data():
    return grid.synthesize(grid.Synth(sites=3, per_site=40, rois=24, seed=1))


def test_planted_effect_is_weaker_dmn_connectivity_in_asd(data):
    fc, net, dx = data["fc"], data["networks"], data["dx"]

    def within(members):
        iu = np.triu_indices(len(members), 1)
        return fc[:, members][:, :, members][:, iu[0], iu[1]].mean(axis=1)

    dmn, other = np.flatnonzero(net == 0), np.flatnonzero(net == 1)
    assert len(dmn) >= 2 and len(other) >= 2
    within, control = within(dmn), within(other)
    assert within[dx == 1].mean() < within[dx == 0].mean() - 0.1  # planted
    assert abs(control[dx == 1].mean() - control[dx == 0].mean()) < 0.1  # elsewhere: none
    # sites differ (what ComBat has to remove) and so does prevalence
    means = [fc[data["sites"] == s].mean() for s in sorted(set(data["sites"]))]
    assert np.ptp(means) > 0.02


def test_invariant_features_ignore_the_roi_order(data):
    fc = data["fc"][:5]
    perms = grid._permutations(5, fc.shape[1], 0)
    permuted = np.stack([m[p][:, p] for m, p in zip(fc, perms, strict=True)])
    np.testing.assert_allclose(grid._eig_features(permuted), grid._eig_features(fc), atol=1e-10)


def test_verdicts_follow_the_confidence_interval():
    rng = np.random.default_rng(0)
    a = (rng.random(800) < 0.8).astype(float)
    b = (rng.random(800) < 0.6).astype(float)
    mean, lo, hi = grid.paired_ci(a, b)
    assert lo < mean < hi and grid.verdict(mean, lo, hi) == "holds"
    assert grid.verdict(*grid.paired_ci(b, a)).startswith("reversed")
    assert grid.verdict(0.0, -0.02, 0.025).startswith("no effect")
    assert grid.verdict(0.01, -0.05, 0.07) == "inconclusive"
