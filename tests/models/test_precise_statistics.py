"""Precise normalisation statistics: running statistics recomputed for the current weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.models import build_model
from pipeline.models.options import ModelOptions
from pipeline.models.training import fit
from pipeline.models.training._statistics import (
    recompute_running_statistics,
    running_statistics_modules,
)


def _lagging_model() -> tuple[nn.Module, list[torch.Tensor]]:
    """Linear → BatchNorm whose running statistics belong to the weights before a step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    data = [torch.randn(32, 4) + 3.0 for _ in range(4)]
    model.train()
    with torch.no_grad():
        for x in data * 5:  # running statistics settle for these weights
            model(x)
        model[0].weight.mul_(3.0)  # then the weights move (a training step)
        model[0].bias.add_(2.0)
    return model, data


def test_recomputed_statistics_follow_the_weights_that_the_running_averages_lag():
    model, data = _lagging_model()
    x = torch.cat(data)
    with torch.no_grad():
        features = model[0](x)
        model.eval()
        lagging = model(x)
    # the lag is real: evaluation-mode outputs are far from standardised
    assert lagging.mean(0).abs().max() > 1.0
    n = recompute_running_statistics(model, data)
    assert n == 4
    assert not model.training  # the training flag is restored
    assert model[1].momentum == 0.1  # and the momentum
    batch_means = torch.stack([model[0](d).mean(0) for d in data]).mean(0).detach()
    torch.testing.assert_close(model[1].running_mean, batch_means)
    with torch.no_grad():
        precise = model(x)
    assert precise.mean(0).abs().max() < 0.1
    torch.testing.assert_close(precise.std(0), torch.ones(3), atol=0.1, rtol=0)
    assert (features.std(0) - 1).abs().max() > 0.3  # (its input was not standardised already)


@pytest.mark.parametrize("name", ["cnn", "octahedral", "relaxed", "steerable"])
def test_every_volume_model_has_its_normalisation_layers_found(name):
    hp = {
        "cnn": {"widths": (4, 8)},
        "octahedral": {"widths": (2, 3)},
        "relaxed": {"widths": (2, 4)},
        "steerable": {"widths": ("4x0e + 1x1e", "8x0e + 2x1e")},
    }[name]
    model = build_model(name, 1, 2, **hp)
    found = running_statistics_modules(model)
    names = {type(m).__name__ for m in found}
    assert "PooledFeatureNorm" in names  # the head's
    # and those of the feature extractor (torch's BatchNorm3d, or the steerable NormGate)
    assert names & {"BatchNorm3d", "NormGate"}, names
    before = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in found]
    x = [torch.randn(3, 1, 9, 9, 9) * 2 + 1 for _ in range(2)]
    assert recompute_running_statistics(model, x) == 2
    changed = [
        any(
            not torch.equal(v, b[k])
            for k, v in m.named_buffers(recurse=False)
            if k.startswith("running_")
        )
        for m, b in zip(found, before, strict=True)
    ]
    assert all(changed)


def test_a_model_without_running_statistics_is_not_run():
    calls = []
    model = nn.Linear(2, 2)
    model.register_forward_hook(lambda *a: calls.append(1))
    assert recompute_running_statistics(model, [torch.zeros(1, 2)]) == 0
    assert calls == []


def test_fit_leaves_running_statistics_of_its_final_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 2
    x = torch.randn(16, 1, 9, 9, 9, generator=g) + 2.0
    x[y == 1, :, 2:7, 2:7, 2:7] += 1.5
    data = TensorDataset(x, y)

    def trained(precise: bool) -> nn.Module:
        torch.manual_seed(0)
        model = build_model("cnn", 1, 2, widths=(4, 8))
        opts = ModelOptions(epochs=3, batch_size=4, learning_rate=5e-2, device="cpu",
                            resume=False, progress=False, precise_statistics=precise)  # fmt: skip
        fit(model, data, None, tmp_path / str(precise), opts)
        return model

    precise, lagging = trained(True), trained(False)
    # same weights (the recomputation does not touch parameters or the training steps)
    for (k, a), (_, b) in zip(precise.named_parameters(), lagging.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    # the head's norm: its running mean is the mean over training batches of the pooled
    # features of the final weights, not an average that lags them (12 steps of momentum 0.1
    # from a running mean of 0)
    running = {m: m.head[0].running_mean.clone() for m in (precise, lagging)}
    head_in = []
    hook = precise.head[0].register_forward_hook(lambda m, i, o: head_in.append(i[0].detach()))
    precise.train()
    with torch.no_grad():
        for xb in torch.split(x, 4):
            precise(xb)
    hook.remove()
    pooled_mean = torch.stack([h.mean(0) for h in head_in]).mean(0)
    err_precise = (running[precise] - pooled_mean).abs().max()
    err_lagging = (running[lagging] - pooled_mean).abs().max()
    assert err_precise < 0.25 * err_lagging, (err_precise, err_lagging)


def test_statistics_are_taken_on_the_training_volumes_as_they_are_not_augmented(
    tmp_path, monkeypatch
):
    """With SO(3) augmentation, the statistics pass sees every fit volume once, unrotated (the
    inputs the model is evaluated on), after every epoch."""
    import pipeline.models.training._engine as engine

    seen: list[list[torch.Tensor]] = []
    real = engine.recompute_running_statistics

    def spy(model, batches, amp=None):
        batches = list(batches)
        seen.append(batches)
        return real(model, batches, amp)

    monkeypatch.setattr(engine, "recompute_running_statistics", spy)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 1, 9, 9, 9, generator=g)
    data = TensorDataset(x, torch.arange(10) % 2)
    opts = ModelOptions(epochs=2, batch_size=4, device="cpu", resume=False, progress=False,
                        augment="so3")  # fmt: skip
    fit(build_model("cnn", 1, 2, widths=(4, 8)), data, None, tmp_path, opts)
    assert len(seen) == 2  # once per epoch
    for batches in seen:
        got = torch.cat(batches)
        assert [len(b) for b in batches] == [4, 4, 2]
        # the same volumes, each once, bit for bit (a rotation would resample them)
        order = [int(torch.nonzero((x == v).flatten(1).all(1))[0]) for v in got]
        assert sorted(order) == list(range(10))
    opts_off = opts.model_copy(update={"precise_statistics": False})
    seen.clear()
    fit(build_model("cnn", 1, 2, widths=(4, 8)), data, None, tmp_path / "off", opts_off)
    assert seen == []
