"""The statistics of ``benchmarks/symmetry_grid.py`` (issue 16): the seed's findings are paired
differences with two-stage bootstrap CIs, and the verdicts follow planted differences.

The benchmark itself (hundreds of trainings) is not run here; these cells are synthetic
per-subject correctness with a known difference between arms.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import symmetry_grid as grid
from benchmarks._paired import paired_ci

SEEDS, SUBJECTS = 8, 120


def _cells(accuracy: dict[str, float], seed_sd: float = 0.0, rng_seed: int = 0) -> dict:
    """Cells of every arm × input whose correctness is Bernoulli(accuracy[arm] + seed shift)."""
    rng = np.random.default_rng(rng_seed)
    shifts = rng.normal(0, seed_sd, SEEDS)
    cells = {}
    for arm, p in accuracy.items():
        for kind in grid.INPUTS:
            runs = []
            for s in range(SEEDS):
                q = np.clip(p + shifts[s], 0, 1)
                correct = (rng.random(SUBJECTS) < q).astype(int).tolist()
                runs.append({"accuracy": float(np.mean(correct)), "correct": correct})
            cells[(arm, kind)] = runs
    return cells


def _verdicts(cells: dict) -> dict[str, str]:
    lines = grid.finding_lines(cells, list(grid.ARMS), list(grid.INPUTS))
    found = [ln for ln in lines if ln.startswith("- ")]
    assert len(found) == 4  # the seed's four findings, all measured
    return {ln.split(" (")[0][2:]: ln.rsplit("**", 2)[1] for ln in found}


def test_planted_advantage_of_invariant_models_is_found():
    acc = {"cnn": 0.6, "cnn_aug": 0.6, "octahedral": 0.9, "steerable": 0.9, "relaxed": 0.9}
    v = _verdicts(_cells(acc))
    assert v["Built-in invariance helps"] == "holds"
    assert v["Built-in invariance beats augmentation"] == "holds"
    # relaxed and octahedral are planted equal: never 'holds' or 'reversed'
    assert v["Approximate beats exact invariance"] in {
        "inconclusive",
        "no effect (CI within ±0.03)",
    }


def test_planted_reversal_is_reported_as_such():
    acc = {"cnn": 0.9, "cnn_aug": 0.9, "octahedral": 0.6, "steerable": 0.6, "relaxed": 0.6}
    v = _verdicts(_cells(acc))
    assert v["Built-in invariance helps"].startswith("reversed")


def test_two_stage_interval_carries_the_disagreement_of_seeds():
    """Seeds that disagree widen the CI: the same subjects' noise with a seed-level spread
    gives a wider interval than without it, and the one-stage (pooled subjects) bootstrap would
    miss that."""
    calm = _cells({"a": 0.8, "b": 0.8}, seed_sd=0.0)
    rough = _cells({"a": 0.8, "b": 0.8}, seed_sd=0.15)

    def width(cells, two_stage=True):
        a = np.array([r["correct"] for r in cells[("a", "native")]], float)
        b = np.array([r["correct"] for r in cells[("b", "native")]], float)
        # seed shifts hit one arm only in 'rough': arm b gets its own draw of shifts
        if two_stage:
            _, lo, hi = paired_ci(a, b)
        else:
            _, lo, hi = paired_ci(a.ravel(), b.ravel())
        return hi - lo

    rough_b = _cells({"b": 0.8}, seed_sd=0.15, rng_seed=1)
    rough = {**rough, **rough_b}
    assert width(rough) > 1.5 * width(calm)
    assert width(rough) > 1.5 * width(rough, two_stage=False)


def test_power_lines_state_the_sizes():
    text = " ".join(grid.power_lines(grid.SCALES["demo"]))
    assert f"k = {grid.DEMO_SEEDS}" in text and f"n = {grid.DEMO_TEST}" in text


def test_cells_train_with_the_scales_warmup(tmp_path, monkeypatch):
    """``run_cell`` hands the recipe's warmup to the training: the first epoch runs at a third
    of the rate with 2 warmup epochs, at the full rate without."""
    import dataclasses

    import torch

    from pipeline.models.training import epoch_learning_rate

    seen = []

    def fake_fit(model, train, test, out, opts, measure_epsilon=True):
        seen.append(epoch_learning_rate(opts, 0) / opts.learning_rate)
        return {"history": [{"train_volumes_per_s": 1.0}], "best_epoch": 0}

    monkeypatch.setattr(grid, "fit", fake_fit)
    scale = dataclasses.replace(grid.SCALES["demo"], n_train=4, n_test=4, side=9)
    data = {"native": torch.zeros(8, 1, 9, 9, 9)}
    labels = torch.tensor([0, 1] * 4)
    for warmup in (2, 0):
        scale = dataclasses.replace(scale, warmup_epochs=warmup)
        grid.run_cell("cnn", "native", data, labels, scale, 0, torch.device("cpu"), tmp_path)
    assert seen == [pytest.approx(1 / 3), 1.0]


def test_results_saved_before_the_warmup_field_load_as_the_recipe_without_it(tmp_path):
    """A JSON of a run without warmup reads back with ``warmup_epochs = 0``: it is not resumed
    by today's recipe, and its report keeps the power calculation it was sized by."""
    import dataclasses
    import json

    path = tmp_path / "old.json"
    old_scale = dataclasses.asdict(grid.SCALES["demo"])
    del old_scale["warmup_epochs"]
    path.write_text(json.dumps({"scale": old_scale, "cells": {}, "equivariance": {}}))
    scale, _ = grid._load_json(path)
    assert scale.warmup_epochs == 0
    assert grid._resumable(path, grid.SCALES["demo"], ("cnn",), ("native",))[1] == set()
    old_text, new_text = (
        " ".join(grid.power_lines(scale)),
        " ".join(grid.power_lines(grid.SCALES["demo"])),
    )
    assert "σ_s ≈ 0.06" in old_text and "would need k ≈ 65" in old_text
    assert "σ_s ≈ 0.03" in new_text and "within reach at k = 24" in new_text


@pytest.mark.parametrize(
    ("missing", "finding"),
    [("octahedral", "Approximate beats exact invariance"), ("cnn", "Built-in invariance helps")],
)
def test_findings_that_need_an_absent_arm_are_left_out(missing, finding):
    acc = {a: 0.8 for a in grid.ARMS if a != missing}
    lines = grid.finding_lines(_cells(acc), list(acc), list(grid.INPUTS))
    titles = [ln.split(" (")[0][2:] for ln in lines if ln.startswith("- ")]
    assert finding not in titles and len(titles) == 3


def test_a_rerun_with_more_seeds_trains_only_the_missing_ones(tmp_path, monkeypatch):
    """``run_grid`` resumes from its JSON: saved seeds are kept as they are, only new seeds are
    trained, wall time adds up; a changed recipe starts afresh."""
    import dataclasses

    import torch

    trained: list[int] = []

    def fake_seed(scale, seed, device, arms, inputs, template_cache=None):
        trained.append(seed)
        cell = {"accuracy": 0.5 + seed / 100, "correct": [seed % 2] * 4, "seconds": 1.0}
        return {(a, k): dict(cell) for a in arms for k in inputs}, {}

    monkeypatch.setattr(grid, "run_seed", fake_seed)
    path = tmp_path / "grid.json"
    arms, inputs = ("cnn", "octahedral"), ("native", "registered")
    scale = dataclasses.replace(grid.SCALES["demo"], seeds=2)
    first = grid.run_grid(scale, torch.device("cpu"), arms, inputs, path)
    assert trained == [0, 1] and first["wall_s"] > 0
    grown = grid.run_grid(
        dataclasses.replace(scale, seeds=3), torch.device("cpu"), arms, inputs, path
    )
    assert trained == [0, 1, 2]
    assert [r["seed"] for r in grown["cells"][("cnn", "native")]] == [0, 1, 2]
    assert grown["cells"][("cnn", "native")][1]["accuracy"] == pytest.approx(0.51)
    assert grown["wall_s"] >= first["wall_s"]
    grid.run_grid(dataclasses.replace(scale, seeds=3, epochs=1), torch.device("cpu"), arms,
                  inputs, path)  # fmt: skip
    assert trained == [0, 1, 2, 0, 1, 2]  # another recipe: nothing reused


def test_effect_strength_scales_the_planted_atrophy_of_the_patients_only():
    """``--effect-strength`` reaches the scale the grid runs with (not the shared default), and
    the strength multiplies the planted difference: zero in controls, linear in patients."""
    import dataclasses

    import torch

    seen = {}

    def fake_grid(scale, *args, **kwargs):
        seen["scale"] = scale
        raise SystemExit(0)

    default = grid.SCALES["demo"].effect_strength
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grid, "run_grid", fake_grid)
        with pytest.raises(SystemExit):
            grid.main(["--effect-strength", "0.5", "--seeds", "3", "--no-write"])
    assert seen["scale"].effect_strength == 0.5 and seen["scale"].seeds == 3
    assert grid.SCALES["demo"].effect_strength == default  # the shared scale is untouched

    cpu = torch.device("cpu")
    vols = {}
    for s in (0.0, 1.0, 2.0):
        scale = dataclasses.replace(grid.SCALES["demo"], effect_strength=s)
        data, labels = grid.make_inputs(scale, 6, seed=3, device=cpu)
        vols[s] = data["registered"]
    patients = labels == 1
    assert 0 < int(patients.sum()) < 6
    d1, d2 = vols[1.0] - vols[0.0], vols[2.0] - vols[0.0]
    assert torch.equal(d1[~patients], torch.zeros_like(d1[~patients]))  # controls: no atrophy
    assert d1[patients].abs().max() > 0.05  # patients: atrophy (intensity lost in the bump)
    assert float(d1[patients].sum()) < 0
    # linear in the strength (where the three volumes have signal: noise is added only there)
    signal = (vols[0.0] != 0) & (vols[1.0] != 0) & (vols[2.0] != 0)
    torch.testing.assert_close(d2[signal], 2 * d1[signal], atol=1e-4, rtol=1e-3)


def test_seeds_added_to_some_arms_keep_the_rest_and_pair_on_shared_seeds(tmp_path, monkeypatch):
    """``--arms relaxed octahedral --seeds 4`` on a 2-seed run trains seeds 2 and 3 of those arms
    only, keeps every other saved cell, and each finding pairs only the seeds both sides have:
    the approximate-vs-exact finding uses 4 seeds, the others 2."""
    import dataclasses

    import torch

    trained: list[tuple[int, tuple]] = []

    def fake_seed(scale, seed, device, arms, inputs, template_cache=None):
        trained.append((seed, tuple(arms)))
        rng = np.random.default_rng(seed)
        cells = {}
        for a in arms:
            for k in inputs:
                correct = (rng.random(40) < (0.9 if a == "octahedral" else 0.7)).astype(int)
                cells[(a, k)] = {"accuracy": float(correct.mean()), "correct": correct.tolist(),
                                 "parameters": 10, "train_vps": 1.0}  # fmt: skip
        return cells, {}

    monkeypatch.setattr(grid, "run_seed", fake_seed)
    path = tmp_path / "grid.json"
    scale = dataclasses.replace(grid.SCALES["demo"], seeds=2)
    grid.run_grid(scale, torch.device("cpu"), grid.ARMS, grid.INPUTS, path)
    more = dataclasses.replace(scale, seeds=4)
    res = grid.run_grid(more, torch.device("cpu"), ("relaxed", "octahedral"), grid.INPUTS, path)
    assert [s for s, _ in trained] == [0, 1, 2, 3]
    assert trained[-1][1] == ("relaxed", "octahedral")
    assert len(res["cells"][("relaxed", "native")]) == 4
    assert len(res["cells"][("cnn", "native")]) == 2  # kept, not dropped or retrained
    lines = grid.finding_lines(res["cells"], list(grid.ARMS), list(grid.INPUTS))
    seeds = {ln.split(" (")[0][2:]: ln.split("] (")[1].split(" seeds")[0]
             for ln in lines if ln.startswith("- ")}  # fmt: skip
    assert seeds["Approximate beats exact invariance"] == "4"
    assert seeds["Built-in invariance helps"] == "2"
    # octahedral planted 0.2 better than relaxed: found with the added seeds
    assert "**reversed" in next(ln for ln in lines if "Approximate" in ln)
    text = grid.report(res, "demo", more, torch.device("cpu"), 1.0)
    assert "2–4 seeds per cell" in text and "| seeds |" in text
    # a full rerun at the original count still keeps the added seeds in the JSON
    grid.run_grid(scale, torch.device("cpu"), grid.ARMS, grid.INPUTS, path)
    _, saved = grid._load_json(path)
    assert len(saved["cells"][("relaxed", "native")]) == 4


def test_report_from_saved_results_is_dated_by_its_last_seed_not_by_now(tmp_path, monkeypatch):
    """A report rewritten from ``--json`` carries the time its seeds were saved; a file saved
    before that time was recorded is dated by its modification time."""
    import dataclasses
    import json
    import os

    import torch

    def fake_seed(scale, seed, device, arms, inputs, template_cache=None):
        cell = {"accuracy": 0.5, "correct": [0, 1], "parameters": 1, "train_vps": 1.0}
        return {(a, k): dict(cell) for a in arms for k in inputs}, {}

    monkeypatch.setattr(grid, "run_seed", fake_seed)
    path = tmp_path / "grid.json"
    scale = dataclasses.replace(grid.SCALES["demo"], seeds=1)
    grid.run_grid(scale, torch.device("cpu"), ("cnn",), ("native",), path)
    payload = json.loads(path.read_text())
    payload["saved_utc"] = "2001-02-03T04:05:00+00:00"
    path.write_text(json.dumps(payload))
    _, results = grid._load_json(path)
    assert "2001-02-03 04:05 UTC" in grid.report(results, "demo", scale, torch.device("cpu"), 1.0)
    del payload["saved_utc"]  # as saved before the time was recorded
    path.write_text(json.dumps(payload))
    os.utime(path, (981173100, 981173100))  # 2001-02-03 04:05 UTC
    _, results = grid._load_json(path)
    assert "2001-02-03 04:05 UTC" in grid.report(results, "demo", scale, torch.device("cpu"), 1.0)


def test_findings_whose_sides_share_no_seed_say_so():
    cells = _cells({"relaxed": 0.7, "octahedral": 0.9})
    cells = {k: [r | {"seed": i + (100 if k[0] == "relaxed" else 0)} for i, r in enumerate(rs)]
             for k, rs in cells.items()}  # fmt: skip
    lines = grid.finding_lines(cells, ["relaxed", "octahedral"], list(grid.INPUTS))
    line = next(ln for ln in lines if "Approximate" in ln)
    assert line.endswith("not measured (its two sides share no seed)")


def test_the_pilot_reproduces_a_grid_cell_and_applies_its_variant(tmp_path):
    """``symmetry_grid_pilot.retrain`` with no variant is the grid's own cell (same subjects,
    initialisation, shuffles: same accuracy and ε); a variant changes the recipe it trains with."""
    import dataclasses

    import torch

    from benchmarks import symmetry_grid_pilot as pilot

    scale = dataclasses.replace(grid.SCALES["demo"], side=9, n_train=10, n_test=6, epochs=2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 8)
    # subjects whose label shows in their mean intensity (the grid's own are slow to build)
    data = {"native": torch.randn(16, 1, 9, 9, 9, generator=gen) + labels.view(-1, 1, 1, 1, 1)}
    cell = grid.run_cell("cnn", "native", data, labels, scale, 3, torch.device("cpu"), tmp_path)
    again = pilot.retrain(scale, "cnn", 3, "native", data, labels, {})
    assert again["accuracy"] == cell["accuracy"] and again["epsilon"] == cell["epsilon"]
    assert len(again["history"]) == 2
    opts = pilot.recipe_options(scale, "cnn_aug", 3, {"warmup_epochs": 0, "learning_rate": 1e-3})
    assert (opts.warmup_epochs, opts.learning_rate, opts.augment) == (0, 1e-3, "so3")
    with pytest.raises(SystemExit):
        pilot.main(["--arm", "cnn", "--cells", "3:sideways", "--variant", "base={}"])
