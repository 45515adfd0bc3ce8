"""Retrain chosen cells of the symmetry grid under variants of the training recipe.

The pilot behind the grid's warmup (RESULTS.md, symmetry grid sections): cells that ended near
chance were retrained with the recipe they ran with and with variants of it (a 100× symmetry
penalty, half the learning rate, warmup epochs), with the training and validation loss of every
epoch, to tell an optimisation failure from symmetry breaking. It reproduces a cell exactly: the
same subjects (:func:`benchmarks.symmetry_grid.make_inputs`, ``SUBJECT_SEED_OFFSET + seed``), the
same initialisation and shuffles.

Usage::

    python -m benchmarks.symmetry_grid_pilot --arm relaxed --cells 38:native_rotated \\
        46:native_rotated --variant base='{}' --variant warm2='{"warmup_epochs": 2}' \\
        --variant penalty100='{"symmetry_penalty": 1.0}' --json pilot.json

A variant is a JSON object of :class:`pipeline.models.options.ModelOptions` fields laid over the
grid's recipe (``--scale``, ``--effect-strength``; ``base`` is ``{}``, the recipe of the grid
before its warmup when given ``'{"warmup_epochs": 0}'``). Prints one JSON line per cell and
variant; ``--json`` saves them all. Cells take about 20 s each on one CPU core at demo scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import symmetry_grid as grid
from pipeline.io import write_text
from pipeline.models.options import ModelOptions

logger = logging.getLogger("benchmarks.symmetry_grid_pilot")


def recipe_options(scale: grid.Scale, arm: str, seed: int, variant: dict) -> ModelOptions:
    """The grid's training options of ``arm`` with ``variant``'s fields laid over them
    (:func:`benchmarks.symmetry_grid.cell_options`, on the CPU)."""
    return grid.cell_options(arm, scale, seed, torch.device("cpu"), variant)


def retrain(scale: grid.Scale, arm: str, seed: int, kind: str, data, labels, variant: dict) -> dict:
    """Train one cell under ``variant`` (:func:`benchmarks.symmetry_grid.run_cell`); accuracy,
    measured ε, best epoch and the loss history."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cell = grid.run_cell(arm, kind, data, labels, scale, seed, torch.device("cpu"), Path(tmp),
                             variant)  # fmt: skip
    history = [
        {"train_loss": round(h["train_loss"], 3), "val_loss": round(h["val_loss"], 3)}
        for h in cell["history"]
        if "val_loss" in h
    ]
    return {"accuracy": cell["accuracy"], "epsilon": cell["epsilon"],
            "best_epoch": cell["best_epoch"], "seconds": round(time.perf_counter() - t0, 1),
            "history": history}  # fmt: skip


def _cell(text: str) -> tuple[int, str]:
    seed, _, kind = text.partition(":")
    if kind not in grid.INPUTS or not seed.isdigit():
        raise argparse.ArgumentTypeError(f"expected SEED:INPUT with INPUT in {grid.INPUTS}: {text}")
    return int(seed), kind


def _variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    try:
        fields = json.loads(spec or "{}")
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name}: not JSON ({exc.msg})") from None
    if not isinstance(fields, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: expected a JSON object")
    return name, fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(grid.SCALES), default="demo")
    parser.add_argument("--effect-strength", type=float, default=None)
    parser.add_argument("--arm", choices=grid.ARM_CHOICES, required=True)
    parser.add_argument("--cells", type=_cell, nargs="+", required=True, help="SEED:INPUT ...")
    parser.add_argument("--variant", type=_variant, action="append", required=True,
                        help="NAME=JSON of ModelOptions fields (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="save every row here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    scale = grid.SCALES[args.scale]
    if args.effect_strength is not None:
        scale = replace(scale, effect_strength=args.effect_strength)
    rows, inputs = [], {}
    for seed, kind in args.cells:
        if seed not in inputs:  # one seed's subjects at a time
            n = scale.n_train + scale.n_test
            inputs = {
                seed: grid.make_inputs(
                    scale, n, grid.SUBJECT_SEED_OFFSET + seed, torch.device("cpu")
                )
            }
        data, labels = inputs[seed]
        for name, variant in args.variant:
            row = {"seed": seed, "input": kind, "arm": args.arm, "variant": name}
            row |= retrain(scale, args.arm, seed, kind, data, labels, variant)
            print(json.dumps(row), flush=True)  # noqa: T201 - the pilot's output
            rows.append(row)
            if args.json is not None:
                write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
