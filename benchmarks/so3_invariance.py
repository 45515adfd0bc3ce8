r"""SO(3) invariance of every model by input size, against the harness's floor.

Usage::

    python -m benchmarks.so3_invariance [--sizes 33 48] [--inputs 8] [--rotations 4]

For each model of :data:`pipeline.models.MODEL_NAMES` (untrained; BatchNorm/RMS statistics
calibrated on one batch of other inputs, then ``eval()``) and each cube side, draws smooth
band-limited volumes (:func:`pipeline.symmetry.smooth_volumes`), rotates them by random SO(3)
rotations with quintic B-splines and reports, in float64 (:func:`pipeline.symmetry.so3_invariance`):

- the error: RMS movement of the logits, in units of their input-to-input spread;
- the floor: the same for the spline round trip (rotate and rotate back);
- the error relative to the plain ``cnn``'s at the same size;
- the largest relative change under two generators of the 24 exact cube rotations (≤ 1e-5
  expected for the invariant models at any size).

Targets (issue 15): ``steerable`` error ≤ 0.05 and ≤ 1/4 of the ``cnn``'s, at 33³ and 48³.
With ``--train-steps N`` each model is first trained by the engine (:func:`pipeline.models.training.run_training`) for about ``N`` AdamW steps on a synthetic
pose-independent task (label: which of two radial profiles the volume was drawn from) and
measured again. Writes the section ``so3_invariance`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from benchmarks._results import machine_line, write_section
from pipeline.io import write_text
from pipeline.models import MODEL_NAMES, build_model
from pipeline.models.options import ModelOptions
from pipeline.models.training import TrainingTask, run_training
from pipeline.symmetry import (
    cube_rotations,
    equivariance_error,
    random_rotations,
    rotate_cube,
    smooth_volumes,
    so3_invariance,
)

logger = logging.getLogger("benchmarks.so3_invariance")

TARGET_ERROR, TARGET_VS_CNN = 0.05, 0.25


def _generators() -> list:
    """90° about z and 120° about (1, 1, 1): invariance to both is invariance to all 24."""
    keep = ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    return [g for g in cube_rotations() if g.matrix.tolist() in keep]


def _task(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes that differ in band limit (σ 1.5 vs 3 voxels): a pose-independent label."""
    half = n // 2
    a = smooth_volumes(half, (size,) * 3, sigma=1.5, seed=seed)
    b = smooth_volumes(n - half, (size,) * 3, sigma=3.0, seed=seed + 1)
    y = torch.cat([torch.zeros(half), torch.ones(n - half)]).long()
    return torch.cat([a, b]).float(), y


def _train(model: torch.nn.Module, size: int, steps: int, seed: int) -> float:
    """Train ``model`` with the project's engine for about ``steps`` AdamW steps (batches of 4 of
    16 volumes, so ``ceil(steps / 4)`` epochs) on the CPU; return the last epoch's mean loss."""
    x, y = _task(16, size, seed)

    def step(model, batch, rng, noise, device, amp):
        xb, yb = (t.to(device) for t in batch)
        with amp():
            loss = torch.nn.functional.cross_entropy(model(xb).float(), yb)
        if hasattr(model, "symmetry_penalty"):
            loss = loss + model.symmetry_penalty()
        return {"loss": loss}

    options = ModelOptions(
        epochs=max(1, math.ceil(steps / 4)), batch_size=4, learning_rate=3e-3,
        weight_decay=0.01, seed=seed, device="cpu", amp=False, resume=False, progress=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        history, _, _ = run_training(
            model, TensorDataset(x, y), tmp, options, TrainingTask(step=step)
        )
    return float(history[-1]["train_loss"])


def measure(
    names: list[str], sizes: list[int], n_inputs: int, n_rot: int, train_steps: int, seed: int
) -> list[dict]:
    """One row per (model, size, trained?) with error, floor, ratio to cnn and cube error."""
    rows = []
    rotations = random_rotations(n_rot, seed=seed + 100)
    for size in sizes:
        x = smooth_volumes(n_inputs, (size,) * 3, seed=seed)
        calib = smooth_volumes(4, (size,) * 3, seed=seed + 1)
        for name in names:
            torch.manual_seed(seed)
            model = build_model(name, 1, 4)
            phases = ["untrained"] + (["trained"] if train_steps else [])
            for phase in phases:
                loss = None
                if phase == "trained":
                    loss = _train(model, size, train_steps, seed + 7)
                model = model.double()
                if phase == "untrained":
                    model.train()
                    with torch.no_grad():
                        model(calib)
                model.eval()
                t0 = time.perf_counter()
                res = so3_invariance(model, x, rotations)
                cube = equivariance_error(
                    model, x[:2], [lambda v, g=g: rotate_cube(v, g) for g in _generators()]
                )
                row = {"model": name, "size": size, "phase": phase, **res.as_dict(),
                       "cube_error": float(cube.max()), "seconds": time.perf_counter() - t0,
                       "train_loss": loss}  # fmt: skip
                rows.append(row)
                logger.info("%s %d³ %s: error %.4f floor %.1e cube %.1e (%.0f s)", name, size,
                            phase, res.error, res.floor, row["cube_error"], row["seconds"])  # fmt: skip
                model = model.float()
    for r in rows:
        cnn = next(
            (c for c in rows if c["model"] == "cnn" and (c["size"], c["phase"]) == (r["size"], r["phase"])),
            None,
        )  # fmt: skip
        r["vs_cnn"] = r["error"] / cnn["error"] if cnn else float("nan")
    return rows


def report(payload: dict) -> str:
    """Markdown section of a measurement (as saved by ``--json``)."""
    lines = [
        "## SO(3) invariance of the models by input size",
        "",
        payload["setup"],
        "",
        "| model | size | phase | SO(3) error (÷ spread) | floor | error ÷ floor | error ÷ cnn's "
        "| cube generators, max rel. |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['model']} | {r['size']}³ | {r['phase']} | {r['error']:.4f} | {r['floor']:.1e} "
            f"| {r['ratio']:.0f} | {r['vs_cnn']:.3f} | {r['cube_error']:.1e} |"
        )
    lines.append("")
    for r in payload["rows"]:
        if r["model"] != "steerable":
            continue
        ok = r["error"] <= TARGET_ERROR and r["vs_cnn"] <= TARGET_VS_CNN
        lines.append(
            f"- `steerable` {r['size']}³ {r['phase']}: target (error ≤ {TARGET_ERROR}, ≤ "
            f"{TARGET_VS_CNN} × cnn) {'met' if ok else 'NOT met'} "
            f"({r['error']:.4f}, {r['vs_cnn']:.3f} × cnn)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[33, 48])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--inputs", type=int, default=8, help="band-limited inputs per size")
    parser.add_argument("--rotations", type=int, default=4, help="random SO(3) rotations")
    parser.add_argument("--train-steps", type=int, default=0, help="also measure after training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write raw figures here")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only write the RESULTS.md section from a saved --json")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.from_json:
        write_section("so3_invariance", report(json.loads(args.from_json.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    models = ["cnn"] + [m for m in args.models if m != "cnn"]
    t0 = time.perf_counter()
    rows = measure(models, args.sizes, args.inputs, args.rotations, args.train_steps, args.seed)
    setup = (
        f"{machine_line()}; torch {torch.__version__}; float64; {args.inputs} smooth band-limited "
        f"inputs (Gaussian-filtered noise, σ 2 voxels, zero outside 0.8 of the inscribed ball) × "
        f"{args.rotations} Haar-random rotations, quintic B-spline resampling "
        "(`pipeline.symmetry.so3_invariance`). Error: RMS logit movement ÷ RMS input-to-input "
        "distance of the logits; floor: the same for rotate-and-rotate-back. "
        + (f"Trained: {args.train_steps} AdamW steps (batch 4, float32) on a pose-free "
           "band-limit task. " if args.train_steps else "")
        + f"Wall time {(time.perf_counter() - t0) / 60:.1f} min."
    )  # fmt: skip
    payload = {"setup": setup, "rows": rows}
    if args.json:
        write_text(args.json, json.dumps(payload, indent=2))
    text = report(payload)
    print(text)  # noqa: T201 - the benchmark's report
    if not args.no_write:
        write_section("so3_invariance", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
