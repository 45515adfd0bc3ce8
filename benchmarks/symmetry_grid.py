r"""The seed's grid on brains: augmentation vs built-in invariance, exact vs approximate invariance.

Models {cnn, cnn + random SO(3) augmentation, octahedral, steerable, relaxed} × inputs {native,
native randomly rotated, atlas-registered, registered + randomly rotated}, on a task whose label
does not depend on pose: a planted local grey-matter atrophy (left medial temporal lobe, in
template space) in half of the synthetic subjects.

Synthetic subjects are built here from the MNI152 2009a template nilearn ships
(:func:`pipeline.data.templates.load_template`), with the demo generator's planted atrophy
(:func:`pipeline.data.demo.planted_atrophy`, wider) and brain centre, sampled in batches on the
model's cube:

- anatomy: a smooth random displacement field :math:`d` (Gaussian-filtered noise on a coarse
  grid, amplitude ``warp_mm``), so the subject's image is the template at :math:`q + d(q)`;
- *native* inputs: that image in a scanner-like pose (rotations of a few degrees, a few mm of
  translation); *native rotated*: pose drawn uniformly from :math:`SO(3)`;
- *registered* inputs (group-invariant preprocessing): the template-space image, with a residual
  warp of ``residual`` × the anatomy warp (registration is never perfect) and no pose;
  *registered rotated*: the same, then a uniform :math:`SO(3)` rotation;
- intensity: a random global gain and Gaussian noise.

Each image is sampled once (one interpolation, :func:`torch.nn.functional.grid_sample`) on a
cube whose side keeps every stride lattice centred (:mod:`pipeline.models._layers`).

Reported: test accuracy (mean ± sd over seeds), parameters, train throughput, and on the
registered test set the equivariance error of the logits under random SO(3) rotations next to
the resampling floor (rotate and rotate back, no net rotation). Accuracy against ε: every cell's
measured ε of approximate invariance (relative change of the logits under the 23 non-trivial
cube rotations on its test inputs, :func:`pipeline.symmetry.cube_epsilon`; for the relaxed
model the ε it reports itself in its training metrics), with the rank correlation of accuracy
and ε.

The seed's four findings are paired differences of per-subject correctness on the same test
subjects (every arm and input of a seed shares its subjects), with 95% two-stage bootstrap CIs
over seeds and subjects (:mod:`benchmarks._paired`); the scale's size comes from the power
calculation written beside the results. The training recipe is the one whose seeds agree: two
epochs of linear learning-rate warmup, then cosine decay; early stopping on a stratified
validation share (best epoch kept); batch-normalisation statistics recomputed after every epoch.
Without the warmup a few relaxed and octahedral cells never left chance, and one finding needed
twice the seeds. ``--scale demo --jobs 2`` (24 seeds × 20 cells) answers all four findings in one
run: 57 minutes of 2 CPU cores at the default atrophy strength, 54 at ``--effect-strength 1``
(RESULTS.md); ``--scale full`` is for GPU nodes. With ``--json`` a rerun
resumes: saved seeds of the same recipe are kept and only missing ones are trained.
``--arms relaxed octahedral --seeds 48`` on a saved 24-seed run adds seeds to one finding's arms
only; each finding pairs the seeds that both of its sides have.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import logging
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from benchmarks._paired import MARGIN, half_width, paired_ci, seeds_needed, verdict
from benchmarks._results import machine_line, write_section
from pipeline.anat.synthetic import cube_points, sample_template, smooth_displacement
from pipeline.io import write_text
from pipeline.models import build_model, n_parameters
from pipeline.models.options import ModelOptions
from pipeline.models.training import fit, seed_everything, select_device
from pipeline.symmetry import (
    Rotation,
    axis_angle_matrix,
    cube_epsilon,
    equivariance_error,
    random_rotations,
    resampling_floor,
)

logger = logging.getLogger("benchmarks.symmetry_grid")

INPUTS = ("native", "native_rotated", "registered", "registered_rotated")
ARMS = ("cnn", "cnn_aug", "octahedral", "steerable", "relaxed")
#: every arm ``--arms`` accepts: ``relaxed_free`` is the relaxed model without its symmetry
#: penalty (free symmetry breaking, a larger measured epsilon)
ARM_CHOICES = (*ARMS, "relaxed_free")
#: test volumes each cell's epsilon is measured on
EPSILON_VOLUMES = 8
#: a seed's subjects are drawn with seed ``SUBJECT_SEED_OFFSET + seed`` (its models with ``seed``)
SUBJECT_SEED_OFFSET = 1000


#: the demo scale's size (the power calculation of :func:`power_lines` reads these)
DEMO_TRAIN, DEMO_TEST, DEMO_EPOCHS, DEMO_SEEDS = 96, 160, 15, 24


@dataclass
class Scale:
    """Size of one grid run."""

    voxel_mm: float
    side: int  # cube side in voxels, ≡ 1 (mod 4)
    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    seeds: int
    learning_rate: float = 5e-3
    hparams: dict = field(default_factory=dict)
    # the recipe whose seeds agree (issue 16): cosine decay, early stopping on a stratified
    # validation share of the training subjects (the best validation epoch is kept)
    lr_schedule: str = "cosine"
    # linear warmup before the cosine decay: without it, 7 of 48 seeds at strength 2 had a
    # relaxed or octahedral cell below 0.7 (training loss ≈ 0.65 from the first epoch: an
    # optimisation failure at the full rate, not symmetry breaking, which a 100× symmetry
    # penalty did not cure); 2 warmup epochs trained each such cell of a pilot
    warmup_epochs: int = 2
    val_fraction: float = 0.2
    patience: int = 10
    # running statistics recomputed after every epoch on the unaugmented training set
    # (pipeline.models.training._statistics): without it, failed octahedral and augmented-CNN
    # cells were evaluation-mode collapses of a model whose training loss was still falling
    precise_statistics: bool = True
    warp_mm: float = 6.0
    residual: float = 0.3
    effect_sigma_mm: float = 15.0
    effect_strength: float = 2.0
    noise: float = 0.15
    n_rotations: int = 4


SCALES = {
    # small models at 12 mm, sized by the power calculation in RESULTS.md: 20 cells per seed,
    # seeds run in parallel (``--jobs 2``), within 60 minutes of 2 CPU cores
    "demo": Scale(
        voxel_mm=12.0,
        side=17,
        n_train=DEMO_TRAIN,
        n_test=DEMO_TEST,
        epochs=DEMO_EPOCHS,
        batch_size=8,
        seeds=DEMO_SEEDS,
        hparams={
            "cnn": {"widths": (8, 16, 32)},
            # at (1, 2, 4) / (1, 2, 3) with a head as narrow as the last level, a third of the
            # seeds ended as a constant predictor (every head unit dead); the group-conv models
            # now have a 32-unit head, and a wider last level costs little at 5³
            "octahedral": {"widths": (1, 2, 8)},
            "relaxed": {"widths": (1, 2, 8)},
            "steerable": {"widths": ("4x0e + 2x1e", "8x0e + 2x1e + 1x2e", "24x0e + 4x1e + 2x2e")},
        },
    ),  # fmt: skip
    # default model sizes at 4 mm on a GPU
    "full": Scale(
        voxel_mm=4.0,
        side=57,
        n_train=240,
        n_test=120,
        epochs=25,
        batch_size=8,
        seeds=3,
        n_rotations=8,
    ),  # fmt: skip
    # the short GPU check of benchmarks/gpu_run.sh
    "gpu-short": Scale(
        voxel_mm=4.0, side=57, n_train=64, n_test=64, epochs=5, batch_size=8, seeds=3
    ),  # fmt: skip
}


# --------------------------------------------------------------------------------------------
# synthetic subjects


@functools.lru_cache(maxsize=2)
def _template_arrays(voxel_mm: float, sigma_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template T1w (z-scored in the brain, 0 outside), atrophy map, brain centre (index),
    blurred so that sampling them at ``voxel_mm`` does not alias.

    The atrophy map and the brain centre are the demo generator's
    (:func:`pipeline.data.demo.planted_atrophy` at the demo's centre, with ``sigma_mm``, and
    :func:`pipeline.data.demo.brain_centre`): one definition of the planted effect.
    """
    from scipy import ndimage

    from pipeline.data.demo import brain_centre, planted_atrophy
    from pipeline.data.templates import load_template

    tpl = load_template(2)
    t1 = tpl.t1w.get_fdata().astype(np.float32)
    mask = tpl.mask.get_fdata() > 0
    t1 = np.where(mask, (t1 - t1[mask].mean()) / t1[mask].std(), 0.0).astype(np.float32)
    centre_idx = np.linalg.solve(tpl.mask.affine, np.r_[brain_centre(tpl), 1.0])[:3]
    bump = planted_atrophy(tpl, sigma_mm=sigma_mm).astype(np.float32)
    factor = voxel_mm / 2.0  # template voxels are 2 mm
    if factor > 1:
        sigma = 0.5 * math.sqrt(factor**2 - 1)
        t1, bump = ndimage.gaussian_filter(t1, sigma), ndimage.gaussian_filter(bump, sigma)
    return t1, bump, centre_idx


#: optional ``.npz`` with the arrays of :func:`_template_arrays` (for machines without nilearn)
TEMPLATE_CACHE: Path | None = None


def _cache_key(voxel_mm: float, sigma_mm: float) -> str:
    return f"v{voxel_mm:g}_s{sigma_mm:g}"


def save_template_cache(path: Path, scales: list[Scale]) -> None:
    """Write the blurred template arrays of ``scales`` to ``path`` (``.npz``)."""
    arrays = {}
    for sc in scales:
        key = _cache_key(sc.voxel_mm, sc.effect_sigma_mm)
        t1, bump, centre = _template_arrays(sc.voxel_mm, sc.effect_sigma_mm)
        arrays |= {f"{key}_t1": t1, f"{key}_bump": bump, f"{key}_centre": centre}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def _template_tensors(voxel_mm: float, sigma_mm: float, device: torch.device):
    key = _cache_key(voxel_mm, sigma_mm)
    if TEMPLATE_CACHE is not None and TEMPLATE_CACHE.exists():
        with np.load(TEMPLATE_CACHE) as z:
            t1, bump, centre = z[f"{key}_t1"], z[f"{key}_bump"], z[f"{key}_centre"]
    else:
        t1, bump, centre = _template_arrays(voxel_mm, sigma_mm)
    to = lambda a: torch.as_tensor(a, device=device)[None, None]  # noqa: E731
    return to(t1), to(bump), centre


def make_inputs(scale: Scale, n: int, seed: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Volumes of ``n`` subjects for every input kind (``{kind: (n, 1, N, N, N)}``) and labels."""
    t1, bump, centre = _template_tensors(scale.voxel_mm, scale.effect_sigma_mm, device)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = torch.tensor(rng.permutation(np.arange(n) % 2), dtype=torch.long)
    N, h = scale.side, scale.voxel_mm
    p = cube_points(N, h, device)  # output points, mm
    warp = smooth_displacement(g, n, N, scale.warp_mm, device)
    small = [
        axis_angle_matrix(rng.standard_normal(3), np.deg2rad(rng.uniform(0, 8))) for _ in range(n)
    ]
    poses = {
        "native": (np.stack(small), rng.uniform(-6, 6, (n, 3))),
        "native_rotated": (random_rotations(n, rng), rng.uniform(-6, 6, (n, 3))),
        "registered": (np.broadcast_to(np.eye(3), (n, 3, 3)), np.zeros((n, 3))),
        "registered_rotated": (random_rotations(n, rng), np.zeros((n, 3))),
    }
    gain = torch.exp(0.1 * torch.randn(n, generator=g)).to(device)
    noise = torch.randn(n, 1, N, N, N, generator=g).to(device) * scale.noise
    out = {}
    for kind, (R, t) in poses.items():
        Rt = torch.as_tensor(np.array(R), dtype=torch.float32, device=device)
        tt = torch.as_tensor(t, dtype=torch.float32, device=device)
        q = torch.einsum("bji,bxyzj->bxyzi", Rt, p[None] - tt[:, None, None, None])  # R^T (p - t)
        amp = 1.0 if kind.startswith("native") else scale.residual
        q = q + amp * warp.permute(0, 2, 3, 4, 1)  # anatomy (the field is smooth; sampled at p)
        imgs = []
        for b in range(n):
            strength = scale.effect_strength * float(labels[b])
            imgs.append(sample_template(t1 - strength * bump, centre, q[b : b + 1]))
        x = torch.cat(imgs) * gain[:, None, None, None, None]
        out[kind] = (x + noise * (x != 0)).cpu()
    return out, labels


# --------------------------------------------------------------------------------------------
# training and measures


def _arm_model(arm: str, scale: Scale) -> tuple[str, dict, str]:
    name = {"cnn_aug": "cnn", "relaxed_free": "relaxed"}.get(arm, arm)
    return name, dict(scale.hparams.get(name, {})), "so3" if arm == "cnn_aug" else "none"


def cell_options(
    arm: str, scale: Scale, seed: int, device: torch.device, variant: dict | None = None
) -> ModelOptions:
    """The training options of one cell of ``arm``: the scale's recipe, with ``variant``'s
    :class:`~pipeline.models.options.ModelOptions` fields laid over it (the pilot's variants)."""
    _, _, augment = _arm_model(arm, scale)
    recipe = {
        "epochs": scale.epochs, "batch_size": scale.batch_size,
        "learning_rate": scale.learning_rate, "lr_schedule": scale.lr_schedule,
        "warmup_epochs": scale.warmup_epochs, "val_fraction": scale.val_fraction,
        "patience": scale.patience, "augment": augment, "device": device.type, "seed": seed,
        "resume": False, "progress": False, "precise_statistics": scale.precise_statistics,
    }  # fmt: skip
    if arm == "relaxed_free":
        recipe["symmetry_penalty"] = 0.0
    return ModelOptions(**(recipe | (variant or {})))


def run_cell(
    arm, kind, data, labels, scale, seed, device, workdir, variant: dict | None = None
) -> dict:
    """Train one (model, input, seed) cell; return accuracy, parameters, throughput, measured
    epsilon (the relaxed model's own, from its metrics; :func:`cube_epsilon` for the others),
    the training history and the model. ``variant``: see :func:`cell_options`."""
    name, hp, _ = _arm_model(arm, scale)
    seed_everything(seed)
    model = build_model(name, 1, 2, **hp)
    x_train, x_test = data[kind][: scale.n_train], data[kind][scale.n_train :]
    y_train, y_test = labels[: scale.n_train], labels[scale.n_train :]
    opts = cell_options(arm, scale, seed, device, variant)
    # no test set in fit: the test subjects are scored once, below, not after every epoch
    # ε is measured below on test volumes, not by fit on training ones
    res = fit(model, TensorDataset(x_train, y_train), None, workdir / f"{arm}_{kind}_{seed}", opts,
              measure_epsilon=False)  # fmt: skip
    correct = _predict(model, x_test, device) == y_test.numpy()
    vps = statistics.median(r["train_volumes_per_s"] for r in res["history"])
    model.eval()
    x_eps = x_test[:EPSILON_VOLUMES].to(device)
    measured = getattr(model, "measured_epsilon", None)
    eps = measured(x_eps, scale.batch_size) if measured else cube_epsilon(model, x_eps)
    return {"accuracy": float(correct.mean()), "correct": correct.astype(int).tolist(),
            "parameters": n_parameters(model), "train_vps": vps,
            "epochs_run": len(res["history"]), "best_epoch": res.get("best_epoch"),
            "epsilon": eps["epsilon"], "epsilon_mean": eps["epsilon_mean"],
            "epsilon_source": "model" if measured else "benchmark", "model": model,
            "history": res["history"]}  # fmt: skip


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, device, batch: int = 32) -> np.ndarray:
    """Predicted class of every volume of ``x``."""
    model.eval()
    outs = [
        model(x[i : i + batch].to(device)).float().argmax(1).cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(outs).numpy()


@torch.no_grad()
def so3_errors(model, x: torch.Tensor, n_rot: int, seed: int, device) -> tuple[float, float]:
    """Change of the decision logit under random SO(3) rotations, and the resampling floor.

    With :math:`z(x) = \\text{logit}_1 - \\text{logit}_0`, the error is
    :math:`\\operatorname{mean}|z(Rx) - z(x)| / \\operatorname{sd}_x z(x)` (in units of the
    between-subject spread of the decision variable); the floor uses :math:`R^{-1}(Rx)` instead
    of :math:`Rx` (no net rotation, interpolation only).
    """
    model.eval()
    x = x.to(device)
    z = lambda v: (lambda o: o[:, 1:2] - o[:, 0:1])(model(v).float())  # noqa: E731
    spread = float(z(x).std().clamp(min=1e-12))
    acts = [Rotation(R) for R in random_rotations(n_rot, seed)]
    err = equivariance_error(z, x, acts, relative=False)
    floor = resampling_floor(z, x, acts, relative=False)
    return float(err.mean()) / spread, float(floor.mean()) / spread


def _save_json(path: Path | None, scale: Scale, results: dict) -> None:
    if path is None:
        return
    raw = {f"{a}|{k}": v for (a, k), v in results["cells"].items()}
    payload = {"scale": asdict(scale), "cells": raw, "equivariance": results["equivariance"],
               "wall_s": results.get("wall_s"), "saved_utc": results.get("saved_utc")}  # fmt: skip
    write_text(path, json.dumps(payload, indent=2))  # atomic: a killed run leaves a valid file


def _load_json(path: Path) -> tuple[Scale, dict]:
    payload = json.loads(path.read_text())
    payload["scale"].setdefault("warmup_epochs", 0)  # saved before the warmup was a field
    cells = {tuple(k.split("|")): v for k, v in payload["cells"].items()}
    eq = {k: tuple(v) for k, v in payload["equivariance"].items()}
    # when the last seed was saved (older files did not record it: the file's own time)
    saved = payload.get("saved_utc") or _dt.datetime.fromtimestamp(
        path.stat().st_mtime, _dt.UTC
    ).isoformat(timespec="seconds")
    results = {"cells": cells, "equivariance": eq, "wall_s": payload.get("wall_s"),
               "saved_utc": saved}  # fmt: skip
    return Scale(**payload["scale"]), results


def _recipe(scale: Scale) -> dict:
    """Everything of ``scale`` but its number of seeds, as JSON would store it."""
    return {k: v for k, v in json.loads(json.dumps(asdict(scale))).items() if k != "seeds"}


def _resumable(json_path: Path | None, scale: Scale, arms, inputs) -> tuple[dict, set, dict, float]:
    """A saved run of the same recipe: ``({seed: cells} of every saved seed, the seeds below
    ``scale.seeds`` that have every (arm, input) cell asked for, equivariance errors, wall
    seconds spent on them)``; empty when there is none."""
    if json_path is None or not json_path.exists():
        return {}, set(), {}, 0.0
    old_scale, old = _load_json(json_path)
    if _recipe(old_scale) != _recipe(scale):
        logger.warning("%s was run with another recipe: starting afresh", json_path)
        return {}, set(), {}, 0.0
    per_seed: dict[int, dict] = {}
    for key, rs in old["cells"].items():
        for r in rs:
            per_seed.setdefault(r["seed"], {})[key] = {k: v for k, v in r.items() if k != "seed"}
    wanted = {(a, k) for a in arms for k in inputs}
    done = {s for s, c in per_seed.items() if s < scale.seeds and wanted <= set(c)}
    return per_seed, done, old["equivariance"], float(old.get("wall_s") or 0.0)


def run_seed(
    scale: Scale, seed: int, device: torch.device, arms, inputs, template_cache: Path | None = None
) -> tuple[dict, dict]:
    """Every (arm, input) cell of one seed: its own subjects (training and test), initialisations
    and shuffles. Returns ``({(arm, input): result}, {arm: (SO(3) error, floor)})`` (the errors on
    seed 0 only)."""
    global TEMPLATE_CACHE
    if template_cache is not None:
        TEMPLATE_CACHE = template_cache
    data, labels = make_inputs(
        scale, scale.n_train + scale.n_test, SUBJECT_SEED_OFFSET + seed, device
    )
    cells, eq = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in inputs:
            for arm in arms:
                t0 = time.perf_counter()
                r = run_cell(arm, kind, data, labels, scale, seed, device, Path(tmp))
                model = r.pop("model")
                del r["history"]  # per-epoch rows stay in the cell's log.csv, not the JSON
                if seed == 0 and kind == "registered":
                    x = data["registered"][scale.n_train :][:8]
                    eq[arm] = so3_errors(model, x, scale.n_rotations, seed, device)
                r["seconds"] = time.perf_counter() - t0
                cells[(arm, kind)] = r
                logger.info("seed %d %s/%s: accuracy %.3f (%d epochs, %.0f s)", seed, arm,
                            kind, r["accuracy"], r["epochs_run"], r["seconds"])  # fmt: skip
    return cells, eq


def _worker(scale, seed, device_type, arms, inputs, template_cache, threads):
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return seed, run_seed(scale, seed, torch.device(device_type), arms, inputs, template_cache)


def run_grid(
    scale: Scale,
    device: torch.device,
    arms=ARMS,
    inputs=INPUTS,
    json_path: Path | None = None,
    jobs: int = 1,
) -> dict:
    """Every cell over ``scale.seeds`` seeds, ``jobs`` seeds at a time (one process each, one
    torch thread each on CPU); returns the raw results (saved after each seed).

    A rerun with the same ``json_path`` and recipe resumes: the seeds saved there are kept and
    only the missing ones are trained (so ``--seeds`` can grow a finished run, for every arm or
    for a few: ``--arms relaxed octahedral --seeds 48`` adds seeds to one finding only, and
    every saved cell of other arms or seeds is kept); ``wall_s`` in the results adds up the wall
    time of every run that contributed.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cells: dict[tuple[str, str], list[dict]] = {}
    per_seed, done, old_eq, old_wall = _resumable(json_path, scale, arms, inputs)
    eq: dict[str, tuple[float, float]] = dict(old_eq)
    results = {"cells": cells, "equivariance": eq, "wall_s": old_wall}
    todo = [seed for seed in range(scale.seeds) if seed not in done]
    if per_seed:
        logger.info("resuming %s: %d seeds saved, %d to run", json_path, len(done), len(todo))

    def collect(seed, seed_cells, seed_eq):
        if seed is not None:  # new cells replace saved ones; other saved cells stay
            per_seed[seed] = per_seed.get(seed, {}) | seed_cells
            eq.update(seed_eq)
        cells.clear()
        for s in sorted(per_seed):  # seed order, whatever order the seeds finished in
            for key, r in per_seed[s].items():
                cells.setdefault(key, []).append(r | {"seed": s})
        results["wall_s"] = old_wall + time.perf_counter() - t0
        results["saved_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        _save_json(json_path, scale, results)

    collect(None, {}, {})
    bar = tqdm(total=scale.seeds, initial=scale.seeds - len(todo), desc="grid seeds", unit="seed")
    if jobs <= 1 or device.type == "cuda":
        for seed in todo:
            collect(seed, *run_seed(scale, seed, device, arms, inputs))
            bar.update()
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(
                    _worker,
                    scale,
                    seed,
                    device.type,
                    tuple(arms),
                    tuple(inputs),
                    TEMPLATE_CACHE,
                    threads,
                )  # fmt: skip
                for seed in todo
            ]
            for fut in as_completed(futures):
                seed, (seed_cells, seed_eq) = fut.result()
                collect(seed, seed_cells, seed_eq)
                bar.update()
    bar.close()
    return results


def report(
    results: dict,
    scale_name: str,
    scale: Scale,
    device: torch.device,
    wall: float,
    card: str | None = None,
) -> str:
    """Markdown: accuracy table, equivariance errors, and the verdicts on the seed's findings.

    The machine line dates the results by when their last seed was saved (``saved_utc``), not
    by when the report is written."""
    cells, eq = results["cells"], results["equivariance"]
    saved = results.get("saved_utc")
    ran_at = _dt.datetime.fromisoformat(saved) if saved else None
    arms = list(dict.fromkeys(a for a, _ in cells))
    inputs = list(dict.fromkeys(k for _, k in cells))
    acc = {key: [r["accuracy"] for r in rs] for key, rs in cells.items()}
    counts = sorted({len(rs) for rs in cells.values()})
    per_arm = {a: sorted({len(cells[(a, k)]) for k in inputs if (a, k) in cells}) for a in arms}
    seeds_text = (f"{counts[0]} seeds" if len(counts) == 1 else
                  f"{counts[0]}–{counts[-1]} seeds per cell (column `seeds`)")  # fmt: skip
    extra_col = len(counts) > 1
    if card is None:
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"## Symmetry grid ({scale_name} scale, {device.type}: {card})",
        "",
        f"{machine_line(ran_at) if card == 'CPU' else card}; {seeds_text}; {scale.n_train} train / {scale.n_test} test "
        f"subjects at {scale.voxel_mm:g} mm on a {scale.side}³ cube; {scale.epochs} epochs; "
        f"wall time {wall / 60:.1f} min. Task: planted left-MTL atrophy of strength "
        f"{scale.effect_strength:g} (brain z-units off the template, weighted by a "
        f"{scale.effect_sigma_mm:g} mm Gaussian × grey matter; balanced classes, chance 0.5). "
        "Accuracy mean ± sd over seeds.",
        "",
        "| model | params | train vol/s | "
        + ("seeds | " if extra_col else "")
        + " | ".join(inputs)
        + " |",
        "|---|---:|---:|" + ("---:|" if extra_col else "") + "---:|" * len(inputs),
    ]
    for arm in arms:
        first = cells[(arm, inputs[0])][0]  # parameters do not depend on the input
        vps = statistics.median(r["train_vps"] for k in inputs for r in cells[(arm, k)])
        accs = []
        for k in inputs:
            v = acc[(arm, k)]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            accs.append(f"{statistics.mean(v):.3f} ± {sd:.3f}")
        n_text = "–".join(str(n) for n in per_arm[arm]) + " | " if extra_col else ""
        lines.append(f"| {arm} | {first['parameters']:,} | {vps:.1f} | {n_text}"
                     + " | ".join(accs) + " |")  # fmt: skip
    if eq:
        lines += [
            "",
            "Equivariance error of the decision logit under random SO(3) rotations "
            "(mean |z(Rx) − z(x)| over registered test inputs, seed 0, in units of the sd of z "
            "over subjects), next to the resampling floor (rotate and rotate back, no net "
            "rotation):",
            "",
            "| model | SO(3) error | resampling floor | ratio |",
            "|---|---:|---:|---:|",
        ]
        for arm, (e, f) in eq.items():
            lines.append(f"| {arm} | {e:.2e} | {f:.2e} | {e / max(f, 1e-12):.1f} |")
    lines += _epsilon_lines(cells, arms, inputs)
    lines += ["", *power_lines(scale, counts), "", *finding_lines(cells, arms, inputs)]
    return "\n".join(lines)


#: assumed before the run (power calculation): sd of the per-subject difference of correctness
#: of two arms, and sd between seeds of their mean difference beyond test sampling
ASSUMED_SD_SUBJECT, ASSUMED_SD_SEED = 0.18, 0.06
#: σ_s assumed for the recipe with warmup (:attr:`Scale.warmup_epochs`), sized by its pilot
ASSUMED_SD_SEED_WARMUP = 0.03


def _assumed_sd_seed(scale: Scale) -> float:
    return ASSUMED_SD_SEED_WARMUP if scale.warmup_epochs else ASSUMED_SD_SEED


def _assumption_text(scale: Scale) -> str:
    """Where the assumed between-seed sd of the recipe comes from (the pilot before the run)."""
    if scale.warmup_epochs:
        return (
            "the run before this recipe (no warmup; 48 seeds of relaxed and octahedral at "
            "strength 2) had a per-seed sd of finding 1's differences of 0.051, nearly all of it "
            "from 7 seeds with a relaxed or octahedral cell below 0.7 whose training loss stayed "
            "near 0.65 from the first epoch (an optimisation failure at the full learning rate: "
            "their symmetry-breaking ε ranged from 0.07 to 3.1, and a 100× symmetry penalty left "
            "them at chance); the 37 seeds with every such cell at 0.9 or more had an sd of "
            f"0.009. A pilot retrained three of those cells with {scale.warmup_epochs} warmup "
            "epochs: 0.51 → 0.99, 0.51 → 0.93, 0.60 → 0.99 (half the learning rate also cured "
            f"them, and a fourth). σ_s ≈ {ASSUMED_SD_SEED_WARMUP} leaves room for some such cells "
            "to remain"
        )
    return (
        "the previous runs of this recipe without precise normalisation statistics gave σ_d "
        "0.08–0.31 and per-seed sd of the differences 0.03–0.10, most of it from the few cells "
        "that ended below 0.7; of four such cells retried, the octahedral one was an "
        "evaluation-mode collapse that recomputed statistics cure (0.74 → 0.91), the three "
        "relaxed ones on rotated inputs learn slowly and are not cured (training loss still "
        "0.53–0.67 after 15 epochs); and a pilot of this run found the augmented CNN's cells at "
        "chance to be evaluation-mode collapses as well, from statistics of rotated batches "
        "that do not fit unrotated inputs (0.51 → 1.00 with statistics of the unaugmented "
        f"training set). σ_s ≈ {ASSUMED_SD_SEED} is kept"
    )


def power_lines(scale: Scale, counts: list[int] | None = None) -> list[str]:
    """The power calculation the scale was sized by (:mod:`benchmarks._paired`); ``counts``
    (sorted seeds per cell) when some arms got more seeds than the others afterwards."""
    k = counts[0] if counts else scale.seeds
    sd_seed = _assumed_sd_seed(scale)
    hw = half_width(sd_seed, ASSUMED_SD_SUBJECT, k, scale.n_test)
    mde = hw * (1.96 + 0.84) / 1.96
    k_eq = seeds_needed(sd_seed, ASSUMED_SD_SUBJECT, scale.n_test, MARGIN / 2)
    reach = (
        f"is within reach at k = {k}"
        if k >= k_eq
        else f"would need k ≈ {k_eq} seeds, beyond the 60-minute budget, so a null difference "
        "may stay inconclusive"
    )
    return [
        "Power calculation (before the run): each finding is a paired difference of correctness "
        "on the same test subjects, with a two-stage bootstrap CI (seeds, then subjects within a "
        "seed: each seed has its own subjects, initialisations and shuffles). Its expected 95% "
        "half-width is 1.96·√(σ_s²/k + σ_d²/(k·n)) for k seeds of n test subjects. Assuming "
        f"σ_d ≈ {ASSUMED_SD_SUBJECT} per subject and σ_s ≈ {sd_seed} between seeds: "
        f"{_assumption_text(scale)}. With k = {k} and n = {scale.n_test}, half-width ≈ "
        f"{hw:.3f}, so a difference of {mde:.3f} is detected with 80% power; equivalence within "
        f"±{MARGIN} (a half-width ≲ {MARGIN / 2:g}, room for a small point estimate) {reach}. "
        "The findings pool several cells (models, inputs) per subject, which narrows their "
        "intervals further."
        + "".join(
            f" Seeds added afterwards to some arms (k = {k2}) narrow the half-width of the "
            f"findings between those arms to ≈ "
            f"{half_width(sd_seed, ASSUMED_SD_SUBJECT, k2, scale.n_test):.3f}."
            for k2 in (counts or [])[1:]
        ),
    ]


def _by_seed(runs: list[dict]) -> dict[int, dict]:
    """A cell's runs by seed (results saved without seeds: by position)."""
    return {r.get("seed", i): r for i, r in enumerate(runs)}


def _common_seeds(cells: dict, keys) -> list[int]:
    """The seeds that every cell of ``keys`` (present in ``cells``) has, in order."""
    sets = [set(_by_seed(cells[key])) for key in keys if key in cells]
    return sorted(set.intersection(*sets)) if sets else []


def _subject_means(cells: dict, arms, inputs, seeds: list[int]) -> np.ndarray | None:
    """Correctness per (seed of ``seeds``, test subject), averaged over the cells of ``arms`` ×
    ``inputs``."""
    rows = []
    for key in ((a, k) for a in arms for k in inputs):
        if key not in cells or "correct" not in cells[key][0]:
            continue
        by_seed = _by_seed(cells[key])
        rows.append(np.array([by_seed[s]["correct"] for s in seeds], dtype=float))
    return np.mean(rows, axis=0) if rows and seeds else None


def finding_lines(cells: dict, arms: list[str], inputs: list[str]) -> list[str]:
    """The seed's four findings as paired differences with 95% CIs, and their verdicts."""
    rot = [k for k in inputs if k.endswith("rotated")]
    built = [a for a in ("octahedral", "steerable", "relaxed") if a in arms]
    tests = []
    if {"relaxed", "octahedral"} <= set(arms):
        tests.append(("Approximate beats exact invariance (relaxed vs its exact counterpart, "
                      "octahedral, all inputs)", ["relaxed"], inputs, ["octahedral"], inputs))  # fmt: skip
    if {"registered", "native"} <= set(inputs):
        reg = [k for k in inputs if k.startswith("registered")]
        nat = [k for k in inputs if k.startswith("native")]
        tests.append(("Invariant preprocessing helps (registered vs native inputs, all models)",
                      arms, reg, arms, nat))  # fmt: skip
    if rot and built and "cnn" in arms:
        tests.append(("Built-in invariance helps (octahedral, steerable, relaxed vs plain cnn, "
                      "rotated inputs)", built, rot, ["cnn"], rot))  # fmt: skip
    if rot and built and "cnn_aug" in arms:
        tests.append(("Built-in invariance beats augmentation (octahedral, steerable, relaxed vs "
                      "cnn + SO(3) augmentation, rotated inputs)", built, rot, ["cnn_aug"], rot))  # fmt: skip
    out = ["Do the seed's findings hold here? (paired difference of accuracy, 95% two-stage "
           "bootstrap CI over seeds and test subjects)", ""]  # fmt: skip
    for title, arms_a, in_a, arms_b, in_b in tests:
        # paired: only the seeds that every cell of both sides has (some arms may have more)
        keys = [(a, k) for a in arms_a for k in in_a] + [(a, k) for a in arms_b for k in in_b]
        seeds = _common_seeds(cells, keys)
        if not seeds:
            out.append(f"- {title}: not measured (its two sides share no seed)")
            continue
        a = _subject_means(cells, arms_a, in_a, seeds)
        b = _subject_means(cells, arms_b, in_b, seeds)
        if a is None or b is None:
            out.append(f"- {title}: not measured (results saved before per-subject correctness)")
            continue
        mean, lo, hi = paired_ci(a, b)
        seed_diffs = (a - b).mean(axis=1)
        sd_seed = float(np.std(seed_diffs, ddof=1)) if len(seed_diffs) > 1 else 0.0
        out.append(
            f"- {title}: {a.mean():.3f} vs {b.mean():.3f}, difference {mean:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] ({len(seeds)} seeds; per-seed differences sd {sd_seed:.3f}, σ_d "
            f"{float((a - b).std()):.2f}): **{verdict(mean, lo, hi)}**"
        )
    return out


def _spearman(pairs: list[tuple[float, float]]) -> float:
    """Spearman rank correlation of ``(a, b)`` pairs; nan when either side is constant."""
    from scipy.stats import spearmanr

    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _epsilon_lines(cells: dict, arms: list[str], inputs: list[str]) -> list[str]:
    """Markdown: accuracy against the measured epsilon, per arm and input, and its correlation."""
    if not any("epsilon" in r for rs in cells.values() for r in rs):
        return []  # results saved before epsilon was measured
    lines = [
        "",
        "Accuracy against the measured ε of approximate invariance (relative change of the "
        "logits under the 23 non-trivial cube rotations, max over the first "
        f"{EPSILON_VOLUMES} test inputs; the relaxed arms report their own ε in their training "
        "metrics, `metrics.json` → `epsilon`; ≈1e-7 is float32 rounding, i.e. exact). "
        "Median ε over seeds; accuracy mean ± sd:",
        "",
        "| model | " + " | ".join(f"{k}: ε | {k}: accuracy" for k in inputs) + " |",
        "|---|" + "---:|---:|" * len(inputs),
    ]
    for arm in arms:
        row = []
        for k in inputs:
            rs = cells.get((arm, k), [])
            eps = [r["epsilon"] for r in rs if "epsilon" in r]
            acc = [r["accuracy"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            row += [f"{statistics.median(eps):.1e}" if eps else "—",
                    f"{statistics.mean(acc):.3f} ± {sd:.3f}" if acc else "—"]  # fmt: skip
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    pairs = [(r["epsilon"], r["accuracy"]) for rs in cells.values() for r in rs if "epsilon" in r]
    relaxed = [
        (r["epsilon"], r["accuracy"])
        for (a, _), rs in cells.items()
        if a.startswith("relaxed")
        for r in rs
        if "epsilon" in r
    ]
    lines += [
        "",
        f"Spearman ρ(ε, accuracy): all cells {_spearman(pairs):+.2f} (n = {len(pairs)})"
        + (
            f"; relaxed cells only {_spearman(relaxed):+.2f} (n = {len(relaxed)})"
            if len(relaxed) >= 3
            else ""
        )
        + ". With a few dozen cells and accuracy sd ≈ 0.1–0.3 per cell, |ρ| below ≈ 0.4 is "
        "within noise.",
    ]
    return lines


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    arms = list(dict.fromkeys(a for a, _ in cells))
    inputs = list(dict.fromkeys(k for _, k in cells))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        means = [statistics.mean(r["accuracy"] for r in cells[(arm, k)]) for k in inputs]
        sds = [statistics.pstdev([r["accuracy"] for r in cells[(arm, k)]]) for k in inputs]
        ax.bar(np.arange(len(inputs)) + i * width, means, width, yerr=sds, label=arm)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(inputs)) + 0.4 - width / 2, inputs)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, ncol=len(arms))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    global TEMPLATE_CACHE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seeds", type=int, default=None, help="override the scale's seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    parser.add_argument("--effect-strength", type=float, default=None,
                        help="override the planted atrophy's strength (a harder task: lower)")  # fmt: skip
    parser.add_argument("--arms", nargs="+", choices=ARM_CHOICES, default=list(ARMS))
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (1: many small convolutions; avoids OpenMP contention)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained at once, one process each (CPU)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="raw results, saved per seed")
    parser.add_argument("--figure", type=Path, default=None, help="accuracy bar chart (PNG)")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--template-cache", type=Path, default=None,
                        help="read template arrays from this .npz (no nilearn needed)")  # fmt: skip
    parser.add_argument("--save-template-cache", type=Path, default=None,
                        help="write the template arrays of every scale to this .npz and exit")  # fmt: skip
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only report (RESULTS.md section, figure) from a saved --json")  # fmt: skip
    parser.add_argument("--device-name", default=None, help="card name for --from-json reports")
    parser.add_argument("--section", default=None,
                        help="RESULTS.md section (default symmetry_grid_<scale>_<device>)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.save_template_cache:
        save_template_cache(args.save_template_cache, list(SCALES.values()))
        return 0
    TEMPLATE_CACHE = args.template_cache
    if args.from_json:
        scale, results = _load_json(args.from_json)
        device = torch.device("cuda" if args.device_name else "cpu")
        wall = results.get("wall_s") or float("nan")
        text = report(results, args.scale, scale, device, wall, args.device_name)
    else:
        overrides = {"seeds": args.seeds, "epochs": args.epochs,
                     "effect_strength": args.effect_strength}  # fmt: skip
        scale = replace(SCALES[args.scale], **{k: v for k, v in overrides.items() if v is not None})
        device = select_device(args.device)
        torch.backends.cudnn.benchmark = True
        results = run_grid(scale, device, args.arms, args.inputs, args.json, args.jobs)
        text = report(results, args.scale, scale, device, results["wall_s"])
    print(text)  # noqa: T201 - the benchmark's report
    if args.figure:
        try:
            _figure(results, args.figure)
        except ImportError as exc:  # matplotlib is optional on GPU nodes
            logger.warning("no figure: %s", exc)
    if not args.no_write:
        write_section(args.section or f"symmetry_grid_{args.scale}_{device.type}", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
