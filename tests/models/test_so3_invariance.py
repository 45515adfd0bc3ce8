"""Arbitrary SO(3) rotations: the steerable model moves ≤ 5% of the input-to-input spread and
≤ 1/4 of what a plain CNN moves (small grid here; 33³ and 48³ in benchmarks/so3_invariance.py)."""

from __future__ import annotations

import torch

from pipeline.models import build_model
from pipeline.symmetry import random_rotations, smooth_volumes, so3_invariance

SIDE = 21


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 1, 4).double()
    with torch.no_grad():  # calibrate the normalisation statistics on other inputs
        model(smooth_volumes(2, (SIDE,) * 3, seed=5))
    return model.eval()


def test_steerable_meets_the_so3_targets_and_the_cnn_does_not():
    x = smooth_volumes(4, (SIDE,) * 3, seed=1)
    rotations = random_rotations(2, seed=2)
    steer = so3_invariance(_model("steerable"), x, rotations)
    cnn = so3_invariance(_model("cnn"), x, rotations)
    assert steer.floor < 0.1 * steer.error or steer.error < 1e-3  # the harness can see it
    assert steer.error <= 0.05, steer
    assert steer.error <= 0.25 * cnn.error, (steer, cnn)
    assert cnn.error > 0.05, cnn  # the target is not met by a model without the symmetry
