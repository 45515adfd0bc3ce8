"""The supervised task: classification or regression of volumes, with rotation augmentation.

:func:`fit` trains any model from :func:`~pipeline.models.build_model` on two datasets of
``(volume, target)`` pairs with the engine (:func:`~pipeline.models.training.run_training`) and
writes into ``out_dir``:

- ``checkpoint.pt``: model, optimizer and scaler state, epoch, history, target scaling (written
  atomically after every epoch; a rerun with ``resume=True`` continues from it and gives exactly
  the steps an uninterrupted run would have taken, because shuffling and augmentation are seeded
  per epoch);
- ``log.csv``: one row per epoch (losses, metrics, throughput, seconds);
- ``metrics.json``: the final metrics, parameter count, device and per-epoch history.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline.errors import ConfigError
from pipeline.io import write_json
from pipeline.models._layers import n_parameters
from pipeline.models.device import autocast
from pipeline.models.options import ModelOptions
from pipeline.models.training._engine import (
    CHECKPOINT,
    TrainingTask,
    _epoch_generator,
    load_checkpoint,
    run_training,
    stratified_holdout,
)
from pipeline.symmetry import cube_rotations, random_rotations, rotate_cube, rotate_volume

logger = logging.getLogger(__name__)

__all__ = ["EPSILON_VOLUMES", "augment_batch", "evaluate", "fit"]


def augment_batch(x: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """Rotate each volume of ``x`` by a random rotation: ``so3`` (uniform, resampled) or
    ``cube``."""
    if kind == "none":
        return x
    if kind == "so3":
        R = torch.as_tensor(random_rotations(x.shape[0], rng), dtype=x.dtype, device=x.device)
        return rotate_volume(x, R)
    if kind == "cube":
        G = cube_rotations()
        return torch.stack(
            [rotate_cube(v, G[int(i)]) for v, i in zip(x, rng.integers(0, 24, len(x)), strict=True)]
        )
    raise ConfigError(f"augment must be 'none', 'so3' or 'cube'; got {kind!r}")


def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = out.float()
    if task == "classification":
        return nn.functional.cross_entropy(out, y)
    return nn.functional.mse_loss(out[:, 0], y.float())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    task: str,
    device: torch.device,
    batch_size: int = 4,
    amp: bool = True,
    scale: tuple[float, float] = (0.0, 1.0),
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data``: accuracy and balanced accuracy, or MAE and R²."""
    model.eval()
    outs, ys = [], []
    for x, y in DataLoader(data, batch_size=batch_size):
        with autocast(device, amp):
            outs.append(model(x.to(device, non_blocking=True)).float())
        ys.append(y.to(device))
    if not outs:
        return {}
    out, y = torch.cat(outs), torch.cat(ys)
    mu, sd = scale
    if task == "classification":
        pred = out.argmax(1)
        recalls = [(pred[y == c] == c).float().mean() for c in torch.unique(y)]
        return {
            "loss": float(_loss(task, out, y)),
            "accuracy": float((pred == y).float().mean()),
            "balanced_accuracy": float(torch.stack(recalls).mean()),
        }
    yz = (y.float() - mu) / sd
    pred = out[:, 0] * sd + mu
    ss_res = ((pred - y) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum().clamp(min=1e-12)
    return {
        "loss": float(_loss(task, out, yz)),
        "mae": float((pred - y).abs().mean()),
        "r2": float(1 - ss_res / ss_tot),
    }


def fit(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None,
    out_dir: str | os.PathLike[str],
    options: ModelOptions | None = None,
    task: str = "classification",
    classes: list | None = None,
    measure_epsilon: bool = True,
) -> dict[str, Any]:
    """Train ``model`` and write checkpoint, ``log.csv`` and ``metrics.json`` into ``out_dir``.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`~pipeline.models.build_model` (its ``symmetry_penalty()``, when present, is
        added to the loss, scaled by ``options.symmetry_penalty`` through the model's ``penalty``;
        its ``measured_epsilon()``, when present, is stored as ``epsilon`` in the metrics,
        measured on the first :data:`EPSILON_VOLUMES` test volumes, or training volumes without
        a test set).
    train_data, test_data : Dataset
        ``(volume (C, X, Y, Z), target)`` pairs; ``test_data`` may be None.
    out_dir : path-like
        Output folder (created).
    options : ModelOptions, optional
        Epochs, batch size, optimiser, learning-rate schedule, augmentation, device, AMP, seed,
        resume, progress; ``precise_statistics`` recomputes the normalisation layers' running
        statistics over the fit part after every epoch; ``val_fraction`` > 0 holds that share
        of ``train_data`` out
        (stratified by class) for the engine's early stopping (the weights of the epoch of
        lowest validation loss are kept, ``patience`` stops early; ``n_val``, ``best_epoch`` and
        ``val`` in the metrics).
    task : {"classification", "regression"}
        Loss: cross-entropy on logits, or MSE on standardised targets.
    classes : list, optional
        Class names, recorded in the metrics.
    measure_epsilon : bool
        Measure a relaxed model's ε at the end (default). A caller that measures it itself on
        its own held-out volumes (the symmetry grid) passes False and saves the pass.

    Returns
    -------
    dict
        The metrics also written to ``metrics.json``.
    """
    opts = options or ModelOptions()
    if hasattr(model, "penalty"):
        model.penalty = opts.symmetry_penalty
    train_data, val_data = _validation_split(train_data, task, opts)
    scale = (0.0, 1.0)
    if task == "regression":
        ys = torch.stack([train_data[i][1] for i in range(len(train_data))]).float()
        scale = (float(ys.mean()), float(ys.std().clamp(min=1e-6)) if len(ys) > 1 else 1.0)
    ckpt_path = Path(out_dir) / CHECKPOINT
    if opts.resume and ckpt_path.exists():  # the target scaling of the run being resumed
        scale = tuple(load_checkpoint(ckpt_path)["scale"])
    has_test = test_data is not None and len(test_data) > 0

    def step(model, batch, rng, noise, device, amp):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if task == "regression":
            y = (y.float() - scale[0]) / scale[1]
        x = augment_batch(x, opts.augment, rng)
        with amp():
            loss = _loss(task, model(x), y)
        if hasattr(model, "symmetry_penalty"):
            loss = loss + model.symmetry_penalty()
        return {"loss": loss}

    def statistics_batches(device, epoch):
        # the fit part as it is, not augmented: the statistics are those of the data the model
        # is applied to (evaluation-mode inputs come unrotated; statistics of resampled, rotated
        # volumes left the augmented CNN at chance on them), in a seeded order of its own
        gen, _ = _epoch_generator(opts.seed, epoch, 2)
        loader = DataLoader(train_data, batch_size=opts.batch_size, shuffle=True, generator=gen)
        for x, _ in loader:
            yield x.to(device, non_blocking=True)

    def extra(model):
        if hasattr(model, "symmetry_defect"):
            return {"symmetry_defect": float(model.symmetry_defect().detach())}
        return {}

    history, device, _ = run_training(
        model,
        train_data,
        out_dir,
        opts,
        TrainingTask(
            step=step,
            evaluate=(
                (lambda m, d: evaluate(m, test_data, task, d, opts.batch_size, opts.amp, scale))
                if has_test
                else None
            ),
            validate=(
                (lambda m, d: evaluate(m, val_data, task, d, opts.batch_size, opts.amp, scale))
                if val_data is not None
                else None
            ),
            checkpoint={"scale": scale, "task": task, "classes": classes or []},
            epoch_extra=extra,
            statistics_batches=statistics_batches,
        ),
    )
    result: dict[str, Any] = {
        "model": getattr(model, "name", type(model).__name__),
        "n_parameters": n_parameters(model),
        "device": str(device),
        "task": task,
        "classes": classes or [],
        "epochs": opts.epochs,
        "history": history,
        "train": evaluate(model, train_data, task, device, opts.batch_size, opts.amp, scale),
    }
    if val_data is not None:
        result.update(n_val=len(val_data), best_epoch=history[-1].get("best_epoch"))
        result["val"] = evaluate(model, val_data, task, device, opts.batch_size, opts.amp, scale)
    if has_test:
        result["test"] = evaluate(model, test_data, task, device, opts.batch_size, opts.amp, scale)
    if measure_epsilon and hasattr(model, "measured_epsilon"):  # relaxed: their own epsilon
        x = _first_volumes(test_data if has_test else train_data, EPSILON_VOLUMES)
        result["epsilon"] = model.measured_epsilon(x, opts.batch_size)
        logger.info("%s: measured epsilon %.3g (mean %.3g) on %d %s volumes",
                    result["model"], result["epsilon"]["epsilon"],
                    result["epsilon"]["epsilon_mean"], len(x),
                    "test" if has_test else "train")  # fmt: skip
        result["epsilon"]["measured_on"] = "test" if has_test else "train"
    write_json(Path(out_dir) / "metrics.json", result)
    return result


def _validation_split(
    data: Dataset, task: str, opts: ModelOptions
) -> tuple[Dataset, Dataset | None]:
    """``(fit part, validation part)`` of ``data`` with ``opts.val_fraction`` held out
    (stratified by class for classification; seeded by ``opts.seed``), or ``(data, None)``."""
    if opts.val_fraction <= 0:
        return data, None
    y = np.array([int(data[i][1]) if task == "classification" else 0 for i in range(len(data))])
    fit_pos, val_pos = stratified_holdout(y, opts.val_fraction, opts.seed)
    if not len(val_pos):
        logger.warning("val_fraction %g of %d volumes is none: no early stopping",
                       opts.val_fraction, len(data))  # fmt: skip
        return data, None
    return Subset(data, fit_pos.tolist()), Subset(data, val_pos.tolist())


#: volumes the relaxed model's epsilon is measured on at the end of :func:`fit`
EPSILON_VOLUMES = 8


def _first_volumes(data: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` volumes of ``data`` (items are volumes or ``(volume, ...)``), stacked."""
    items = [data[i] for i in range(min(n, len(data)))]
    return torch.stack([v[0] if isinstance(v, list | tuple) else v for v in items])
