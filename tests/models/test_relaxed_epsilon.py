"""The relaxed model's own measured epsilon (issue 15 item 4): zero while exactly equivariant,
growing with the symmetry breaking, stored in the training metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline.models import build_model
from pipeline.models.options import ModelOptions
from pipeline.models.training import fit, seed_everything
from pipeline.symmetry import cube_epsilon, group_epsilon

SIDE = 9
TINY = {"widths": (1, 2)}


def _inputs(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, SIDE, SIDE, SIDE, generator=g)
    x[:, :, 1:5, 2:7, 3:6] += 2.0  # no rotational symmetry
    return x


def _relaxed(**hp) -> torch.nn.Module:
    seed_everything(0)
    model = build_model("relaxed", 1, 2, **{**TINY, **hp})
    with torch.no_grad():
        model(_inputs(4, seed=5))  # BatchNorm statistics
    return model.eval()


def _break(model: torch.nn.Module, amount: float) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "relaxed_weights", None)
            if w is not None:
                w.add_(amount * torch.randn(w.shape, generator=g))


def test_epsilon_is_rounding_error_at_init_and_grows_with_the_symmetry_breaking():
    model = _relaxed()
    x = _inputs()
    exact = model.measured_epsilon(x)
    assert exact["epsilon"] <= 1e-5 and exact["n_actions"] == 23 and exact["n_inputs"] == 3
    assert exact["symmetry_defect"] == 0.0
    eps = []
    for amount in (0.02, 0.2):
        _break(model, amount)
        eps.append(model.measured_epsilon(x))
    assert 1e-4 < eps[0]["epsilon"] < eps[1]["epsilon"]
    assert eps[0]["epsilon_mean"] <= eps[0]["epsilon"]
    assert 0 < eps[0]["symmetry_defect"] < eps[1]["symmetry_defect"]
    assert model.training is False  # eval mode kept


def test_group_epsilon_matches_a_direct_computation_and_flags_a_plain_cnn():
    seed_everything(0)
    cnn = build_model("cnn", 1, 2, widths=(4, 8)).eval()
    x = _inputs()
    eps = cube_epsilon(cnn, x)
    assert eps["epsilon"] > 1e-3  # not invariant
    from pipeline.symmetry import cube_rotations

    with torch.no_grad():
        fx = cnn(x)
        rel = [((cnn(g(x)) - fx).norm(dim=1) / fx.norm(dim=1)).max() for g in cube_rotations()[1:]]
    assert eps["epsilon"] == pytest.approx(float(max(rel)), rel=1e-5)
    # a constant function: no spread, epsilon zero
    const = group_epsilon(lambda v: torch.ones(len(v), 2), x, cube_rotations()[1:3])
    assert const["epsilon"] == 0.0 and const["epsilon_spread"] is None
    with pytest.raises(ValueError, match="at least one input"):
        group_epsilon(cnn, x, [])


def test_fit_stores_the_measured_epsilon_in_the_metrics(tmp_path):
    seed_everything(0)
    model = build_model("relaxed", 1, 2, **TINY)
    y = torch.arange(6) % 2
    x = _inputs(6)
    x[y == 1] += 1.0
    opts = ModelOptions(epochs=2, batch_size=3, learning_rate=5e-2, progress=False,
                        device="cpu", seed=0, symmetry_penalty=0.0)  # fmt: skip
    res = fit(model, TensorDataset(x, y), TensorDataset(x[:4], y[:4]), tmp_path, opts)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    eps = saved["epsilon"]
    assert eps == res["epsilon"] and eps["measured_on"] == "test" and eps["n_inputs"] == 4
    assert np.isfinite(eps["epsilon"]) and eps["symmetry_defect"] > 0
    # free symmetry breaking (no penalty) moved the logits off exact invariance
    assert eps["epsilon"] > 1e-5
    # an exact model reports no epsilon
    res_oct = fit(build_model("octahedral", 1, 2, widths=(1, 2)), TensorDataset(x, y), None,
                  tmp_path / "o", opts.model_copy(update={"epochs": 1}))  # fmt: skip
    assert "epsilon" not in res_oct
    # a caller that measures epsilon itself can skip fit's pass
    res_skip = fit(build_model("relaxed", 1, 2, **TINY), TensorDataset(x, y), None,
                   tmp_path / "s", opts.model_copy(update={"epochs": 1}),
                   measure_epsilon=False)  # fmt: skip
    assert "epsilon" not in res_skip
    assert "epsilon" not in json.loads((tmp_path / "s" / "metrics.json").read_text())
