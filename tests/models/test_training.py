"""Training library: splits, dataset, device choice, overfitting, checkpoint/resume, logs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline.errors import ConfigError, InputError
from pipeline.models import build_model
from pipeline.models.data import (
    VolumeDataset,
    encode_labels,
    find_volumes,
    prepare_volume,
    read_participants,
    site_split,
)
from pipeline.models.options import ModelOptions
from pipeline.models.training import fit, load_checkpoint, seed_everything, select_device

TINY = {
    "cnn": {"widths": (4, 8)},
    "octahedral": {"widths": (2, 3)},
    "relaxed": {"widths": (2, 4)},
    "steerable": {"widths": ("4x0e + 1x1e", "8x0e + 2x1e")},
}


def _toy_data(n: int = 8, side: int = 9, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, side, side, side, generator=g)
    x[y == 1, :, 2:7, 2:7, 2:7] += 1.5  # a central bright cube for class 1
    return TensorDataset(x, y)


@pytest.mark.parametrize("name", ["cnn", "octahedral", "relaxed", "steerable"])
def test_overfit_one_batch(name):
    seed_everything(0)
    model = build_model(name, 1, 2, **TINY[name])
    x, y = _toy_data(4).tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if hasattr(model, "symmetry_penalty"):
            loss = loss + model.symmetry_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


def _opts(**kw) -> ModelOptions:
    base = {"batch_size": 3, "learning_rate": 5e-3, "progress": False, "device": "cpu", "seed": 3}
    return ModelOptions(**{**base, **kw})


def test_resume_gives_the_same_next_step(tmp_path):
    data, test = _toy_data(7), _toy_data(4, seed=1)

    def fresh():
        seed_everything(0)
        return build_model("relaxed", 1, 2, **TINY["relaxed"])

    straight = fresh()
    fit(straight, data, test, tmp_path / "a", _opts(epochs=2, augment="cube"))
    interrupted = fresh()
    fit(interrupted, data, test, tmp_path / "b", _opts(epochs=1, augment="cube"))
    resumed = fresh()  # a new process would rebuild the model, then load the checkpoint
    metrics = fit(resumed, data, test, tmp_path / "b", _opts(epochs=2, augment="cube"))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [r["epoch"] for r in metrics["history"]] == [0, 1]
    # the second step really moved the weights
    assert not torch.equal(interrupted.state_dict()["head.3.weight"], resumed.head[3].weight)
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["model_name"] == "relaxed"


def test_outputs_metrics_and_logs(tmp_path):
    seed_everything(0)
    model = build_model("cnn", 1, 2, **TINY["cnn"])
    res = fit(model, _toy_data(6), _toy_data(4, seed=2), tmp_path, _opts(epochs=2, augment="so3"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n_parameters"] == res["n_parameters"] > 0
    assert set(saved["test"]) == {"loss", "accuracy", "balanced_accuracy"}
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["epoch"]) == [0, 1] and (log["train_volumes_per_s"] > 0).all()
    with pytest.raises(ConfigError, match="checkpoint .* is for model 'cnn', not 'steerable'"):
        fit(build_model("steerable", 1, 2, **TINY["steerable"]), _toy_data(4), None, tmp_path,
            _opts(epochs=3))  # fmt: skip


def test_regression_metrics(tmp_path):
    x, _ = _toy_data(6).tensors
    y = torch.linspace(20, 70, 6)
    seed_everything(0)
    res = fit(build_model("cnn", 1, 1, **TINY["cnn"]), TensorDataset(x, y), TensorDataset(x, y),
              tmp_path, _opts(epochs=1), task="regression")  # fmt: skip
    assert set(res["test"]) == {"loss", "mae", "r2"} and res["test"]["mae"] > 0


def test_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="device must be 'auto', 'cuda' or 'cpu'; got 'tpu'"):
        select_device("tpu")


def _participants() -> pd.DataFrame:
    sites = np.repeat(["A", "B", "C"], 8)
    diag = np.tile(["ASD", "TD"], 12)
    return pd.DataFrame({"site": sites, "target": diag}, index=[f"{i:02d}" for i in range(24)])


def test_stratified_split_keeps_every_site_and_class_in_both_folds():
    table = _participants()
    train, test = site_split(table, "stratified", 0.25, seed=1)
    assert len(train) + len(test) == 24 and not set(train) & set(test)
    cells = lambda idx: set(zip(table["site"].iloc[idx], table["target"].iloc[idx], strict=True))  # noqa: E731
    assert cells(test) == cells(train) == set(zip(table["site"], table["target"], strict=True))
    assert len(test) == 6


def test_leave_site_out_split_and_errors():
    table = _participants()
    train, test = site_split(table, "leave-site-out", test_sites=["B"])
    assert set(table["site"].iloc[test]) == {"B"} and "B" not in set(table["site"].iloc[train])
    _, default_test = site_split(table, "leave-site-out")
    assert set(table["site"].iloc[default_test]) == {"C"}
    with pytest.raises(ConfigError, match=r"test_sites \['Z'\] not among the sites"):
        site_split(table, "leave-site-out", test_sites=["Z"])
    with pytest.raises(ConfigError, match="split must be 'stratified' or 'leave-site-out'"):
        site_split(table, "random")


def test_encode_labels():
    codes, task, classes = encode_labels(["TD", "ASD", "TD"])
    assert task == "classification" and classes == ["ASD", "TD"] and codes.tolist() == [1, 0, 1]
    values, task, _ = encode_labels([21.5, 33.0, 40.2, 18.9])
    assert task == "regression" and values.dtype == np.float32


def test_participants_volumes_and_dataset(tmp_path):
    bids, deriv = tmp_path / "bids", tmp_path / "deriv"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "participant_id\tsite\tage\tsex\tdiagnosis\n"
        "sub-01\tA\t20\tF\tASD\nsub-02\tB\t30\tM\tTD\nsub-03\tB\t25\tM\tn/a\n"
    )
    table = read_participants(bids, "diagnosis")
    assert list(table.index) == ["01", "02"]  # sub-03 has no diagnosis
    with pytest.raises(InputError, match="column 'handedness' missing"):
        read_participants(bids, "handedness")
    pattern = "sub-{label}/anat/sub-{label}_T1w.nii.gz"
    with pytest.raises(InputError, match="2 input volume\\(s\\) missing"):
        find_volumes(deriv, table.index, pattern)
    rng = np.random.default_rng(0)
    for label in table.index:
        data = np.zeros((14, 18, 12), np.float32)
        data[3:11, 4:14, 2:10] = rng.uniform(1, 2, (8, 10, 8))
        (deriv / f"sub-{label}/anat").mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(data, np.eye(4)), deriv / f"sub-{label}/anat/sub-{label}_T1w.nii.gz"
        )
    paths = find_volumes(deriv, table.index, pattern)
    ds = VolumeDataset(paths, np.array([0, 1]), levels=2)
    x, y = ds[1]
    assert x.shape == (1, 21, 21, 21) and int(y) == 1  # cube of side 18 -> 21 ≡ 1 (mod 4)
    fg = x[x != 0]
    assert abs(float(fg.mean())) < 1e-5 and float(fg.std()) == pytest.approx(1.0, abs=1e-3)


def test_prepare_volume_pads_symmetrically():
    v = prepare_volume(np.ones((17, 15, 17)), levels=2, cube=False)
    assert v.shape == (1, 17, 17, 17)
    assert torch.equal(v, torch.flip(v, [2]))


# --------------------------------------------------------------------------- training recipe
def _linear_task(validation_losses: list[float], seen: list):
    """A TrainingTask whose validation losses are scripted; ``seen`` gets each epoch's weights."""
    from pipeline.models.training import TrainingTask

    def step(model, batch, rng, noise, device, amp):
        x, y = (t.to(device) for t in batch)
        return {"loss": torch.nn.functional.cross_entropy(model(x.flatten(1)), y)}

    def validate(model, device):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"loss": validation_losses[len(seen) - 1]}

    return TrainingTask(step=step, validate=validate)


def _linear_model() -> torch.nn.Module:
    seed_everything(0)
    return torch.nn.Linear(9**3, 2)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
    from pipeline.models.training import run_training

    seen: list = []
    model = _linear_model()
    opts = _opts(epochs=8, patience=2)
    history, _, _ = run_training(model, _toy_data(6), tmp_path, opts, _linear_task(
        [3.0, 1.0, 2.0, 1.5, 0.5, 9.0, 9.0, 9.0], seen))  # fmt: skip
    assert len(history) == 4  # best at epoch 1; epochs 2 and 3 no better: stop
    assert [r["best_epoch"] for r in history] == [0, 1, 1, 1]
    assert [r["val_loss"] for r in history] == [3.0, 1.0, 2.0, 1.5]
    for k, v in model.state_dict().items():  # the weights of epoch 1, not of the last epoch
        assert torch.equal(v, seen[1][k]) and not torch.equal(v, seen[3][k]), k
    # a rerun resumes a stopped run as stopped: no further epoch
    history2, _, _ = run_training(_linear_model(), _toy_data(6), tmp_path, opts, _linear_task(
        [0.0] * 8, seen2 := []))  # fmt: skip
    assert len(history2) == 4 and seen2 == []
    # without patience every epoch runs, the best one still kept
    seen3: list = []
    model3 = _linear_model()
    run_training(model3, _toy_data(6), tmp_path / "all", _opts(epochs=8), _linear_task(
        [3.0, 1.0, 2.0, 1.5, 0.5, 9.0, 9.0, 9.0], seen3))  # fmt: skip
    assert len(seen3) == 8
    assert all(torch.equal(v, seen3[4][k]) for k, v in model3.state_dict().items())


def test_cosine_schedule_is_logged_and_resumes_exactly(tmp_path):
    from pipeline.models.training import epoch_learning_rate

    opts = {"lr_schedule": "cosine", "warmup_epochs": 1}
    data = _toy_data(7)

    def fresh():
        seed_everything(0)
        return build_model("cnn", 1, 2, **TINY["cnn"])

    straight = fresh()
    metrics = fit(straight, data, None, tmp_path / "a", _opts(epochs=4, **opts))
    rates = [r["learning_rate"] for r in metrics["history"]]
    assert rates == [epoch_learning_rate(_opts(epochs=4, **opts), e) for e in range(4)]
    assert rates == pytest.approx([2.5e-3, 5e-3, 3.75e-3, 1.25e-3])  # warmup, then cosine
    fit(fresh(), data, None, tmp_path / "b", _opts(epochs=2, **opts))
    resumed = fresh()
    fit(resumed, data, None, tmp_path / "b", _opts(epochs=4, **opts))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    constant = fresh()
    fit(constant, data, None, tmp_path / "c", _opts(epochs=4))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(straight.state_dict().values(), constant.state_dict().values(), strict=True)
    )


def test_fit_holds_out_a_stratified_validation_split(tmp_path):
    model = build_model("cnn", 1, 2, **TINY["cnn"])
    metrics = fit(model, _toy_data(8), None, tmp_path, _opts(epochs=3, val_fraction=0.25))
    assert metrics["n_val"] == 2 and 0 <= metrics["best_epoch"] < 3
    assert {"loss", "accuracy"} <= set(metrics["val"])
    log = pd.read_csv(tmp_path / "log.csv")
    assert {"val_loss", "val_accuracy", "best_epoch"} <= set(log.columns)
    assert log["val_loss"].iloc[metrics["best_epoch"]] == pytest.approx(log["val_loss"].min())
