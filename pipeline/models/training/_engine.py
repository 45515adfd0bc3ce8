"""The one training engine: device, mixed precision, seeding per epoch, checkpoint/resume, the
epoch loop, the learning-rate schedule, early stopping on a validation split and ``log.csv``.

:func:`run_training` trains any model on any dataset with a :class:`TrainingTask`, the part that
differs between tasks (its step function, per-epoch evaluation and checkpoint fields). The
supervised task (:mod:`._supervised`), the VAE (:mod:`._vae`) and the ROI models
(:mod:`pipeline.models.roi_experiment`) are such tasks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import ConfigError
from pipeline.io import atomic_path, write_text
from pipeline.models.device import autocast, select_device
from pipeline.models.options import ModelOptions
from pipeline.models.training._statistics import recompute_running_statistics

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT",
    "TrainingTask",
    "autocast",
    "epoch_learning_rate",
    "load_checkpoint",
    "run_training",
    "select_device",
    "seed_everything",
    "stratified_holdout",
]

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds libraries that use the global state
    torch.manual_seed(seed)


def epoch_learning_rate(options: ModelOptions, epoch: int) -> float:
    r"""Learning rate of ``epoch`` (from 0) under ``options.lr_schedule``.

    ``constant``: ``learning_rate``. ``cosine``: linear warmup over ``warmup_epochs`` (epoch
    ``e`` at ``(e + 1) / (warmup_epochs + 1)`` of it), then :math:`\eta \cdot \tfrac12 (1 +
    \cos(\pi t / T))` with ``t`` the epochs since warmup and ``T`` those left, so the last epoch
    still learns. A function of the epoch alone: a resumed run takes the same rates.

    >>> opts = ModelOptions(epochs=4, learning_rate=1.0, lr_schedule="cosine")
    >>> [round(epoch_learning_rate(opts, e), 3) for e in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    """
    lr = options.learning_rate
    if options.lr_schedule == "constant":
        return lr
    warm = options.warmup_epochs
    if epoch < warm:
        return lr * (epoch + 1) / (warm + 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / max(1, options.epochs - warm)))


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (fit, validation) of ``y``, stratified by class (``round(fraction * n_c)`` of
    each class ``c`` that keeps at least one member for fitting).

    >>> fit, val = stratified_holdout(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
    >>> len(fit), len(val), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[val].tolist())
    (6, 2, [0, 1])
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(members)))
        if 0 < k < len(members):
            val.extend(members[:k].tolist())
    val_idx = np.array(sorted(val), dtype=int)
    return np.setdiff1d(np.arange(len(y)), val_idx), val_idx


def _epoch_generator(
    seed: int, epoch: int, *stream: int
) -> tuple[torch.Generator, np.random.Generator]:
    """Torch and numpy generators of one epoch (``stream`` keys an independent sequence)."""
    ss = np.random.SeedSequence([seed, epoch, *stream])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0] % 2**63))
    return g, np.random.default_rng(ss)


def _noise_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Generator of the VAE's reparameterization noise for one epoch, on ``device``."""
    ss = np.random.SeedSequence([seed, epoch, 1])
    g = torch.Generator(device=device)
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0] % 2**63))
    return g


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`run_training` (maps tensors to ``device``)."""
    return torch.load(Path(path), map_location=device, weights_only=False)


def _prepare(
    model: nn.Module, opts: ModelOptions, out_dir: str | os.PathLike[str]
) -> tuple[Path, torch.device, torch.optim.Optimizer, torch.amp.GradScaler]:
    """Output folder, device (model moved there), AdamW and the AMP gradient scaler."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(opts.device)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay
    )
    use_scaler = device.type == "cuda" and opts.amp and not torch.cuda.is_bf16_supported()
    return out, device, optimizer, torch.amp.GradScaler("cuda", enabled=use_scaler)


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    opts: ModelOptions,
    check_hparams: bool,
) -> dict[str, Any] | None:
    """Load the checkpoint at ``path`` into model, optimizer and scaler when resuming.

    A checkpoint of another model (or, with ``check_hparams``, other hyperparameters) is refused
    with a one-line :class:`ConfigError`. Returns the checkpoint, or None when starting afresh.
    """
    if not (opts.resume and path.exists()):
        return None
    ckpt = load_checkpoint(path, str(device))
    name, hparams = getattr(model, "name", None), getattr(model, "hparams", {})
    if ckpt.get("model_name") != name or (check_hparams and ckpt.get("hparams") != hparams):
        detail = f" with hyperparameters {ckpt.get('hparams')}" if check_hparams else ""
        mine = f" with {hparams}" if check_hparams else ""
        raise ConfigError(
            f"checkpoint {path} is for model {ckpt.get('model_name')!r}{detail}, not "
            f"{name!r}{mine}; use another output folder or --no-resume"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    logger.info("resuming %s from epoch %d", path, ckpt["epoch"] + 1)
    return ckpt


@dataclass
class TrainingTask:
    """What differs between training tasks; :func:`run_training` does the rest (device, AMP,
    seeding, checkpoint/resume, the epoch loop, logs).

    Attributes
    ----------
    step : callable
        ``step(model, batch, rng, noise, device, amp) -> dict`` of scalar loss tensors for one
        batch, ``"loss"`` (what is minimised) first; the others are logged as ``train_<name>``.
        ``amp()`` is the mixed-precision context the forward pass runs in (augmentation stays
        outside it).
    evaluate : callable or None
        ``evaluate(model, device) -> dict`` of test metrics after each epoch (``test_<name>``).
    validate : callable or None
        ``validate(model, device) -> dict`` of validation metrics after each epoch
        (``val_<name>``), ``"loss"`` among them: the engine keeps the weights of the epoch of
        lowest validation loss (``best_epoch``; restored at the end) and, with
        ``options.patience``, stops after that many epochs without a lower one.
    checkpoint : dict
        Task fields saved in every checkpoint (``task``, ``classes``, ``scale``).
    check_hparams : bool
        Refuse to resume from a checkpoint with other hyperparameters.
    epoch_extra : callable or None
        ``epoch_extra(model) -> dict`` of extra per-epoch log values.
    statistics_batches : callable or None
        ``statistics_batches(device, epoch) -> iterable`` of model inputs (the training set as
        the model will be applied to it, not augmented): with ``options.precise_statistics``
        the running statistics of the model's normalisation layers are recomputed over them
        after each epoch, before it is evaluated, validated and saved (:mod:`._statistics`).
    """

    step: Callable[..., dict[str, torch.Tensor]]
    evaluate: Callable[[nn.Module, torch.device], dict[str, float]] | None = None
    validate: Callable[[nn.Module, torch.device], dict[str, float]] | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    check_hparams: bool = False
    epoch_extra: Callable[[nn.Module], dict[str, float]] | None = None
    statistics_batches: Callable[[torch.device, int], Iterable[torch.Tensor]] | None = None


def run_training(
    model: nn.Module,
    train_data: Dataset,
    out_dir: str | os.PathLike[str],
    options: ModelOptions,
    task: TrainingTask,
) -> tuple[list[dict[str, Any]], torch.device, dict[str, Any] | None]:
    """The one training engine: train ``model`` on ``train_data`` with ``task``'s step.

    Writes ``checkpoint.pt`` (atomically, after every epoch) and ``log.csv`` into ``out_dir``;
    with ``options.resume`` a rerun continues from the checkpoint and takes exactly the steps an
    uninterrupted run would have taken (shuffling, augmentation and noise are seeded per epoch,
    the learning rate is :func:`epoch_learning_rate` of the epoch, the best validation epoch so
    far is in the checkpoint). With ``task.statistics_batches`` and
    ``options.precise_statistics`` the normalisation layers' running statistics are recomputed
    for the weights of each epoch's end. With ``task.validate`` the model is left with the
    weights of the epoch of lowest validation loss, and ``options.patience`` stops training
    early.

    Returns
    -------
    history : list of dict
        One row per epoch.
    device : torch.device
    checkpoint : dict or None
        The checkpoint resumed from (None when the run started afresh).
    """
    from tqdm.auto import tqdm

    out, device, optimizer, scaler = _prepare(model, options, out_dir)
    name = getattr(model, "name", type(model).__name__)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = _resume(out / CHECKPOINT, model, optimizer, scaler, device, options, task.check_hparams)
    best: dict[str, Any] = {"epoch": -1, "loss": math.inf, "state": None, "stopped": False}
    if ckpt is not None:
        history, start_epoch = ckpt["history"], ckpt["epoch"] + 1
        best = ckpt.get("best") or best
        if best["stopped"]:
            start_epoch = options.epochs
    n_steps = math.ceil(len(train_data) / options.batch_size)
    bar = tqdm(
        total=(options.epochs - start_epoch) * n_steps,
        desc=f"train {name}",
        unit="step",
        disable=not options.progress,
    )
    for epoch in range(start_epoch, options.epochs):
        gen, rng = _epoch_generator(options.seed, epoch)
        noise = _noise_generator(options.seed, epoch, device)
        loader = DataLoader(train_data, batch_size=options.batch_size, shuffle=True, generator=gen)
        lr = epoch_learning_rate(options, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        t0, sums, n_seen = time.perf_counter(), None, 0
        for batch in loader:
            terms = task.step(
                model, batch, rng, noise, device, lambda: autocast(device, options.amp)
            )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            size = len(batch[0] if isinstance(batch, list | tuple) else batch)
            values = torch.stack([t.detach().float() for t in terms.values()]) * size
            sums = values if sums is None else sums + values
            n_seen += size
            bar.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if options.precise_statistics and task.statistics_batches is not None:
            recompute_running_statistics(
                model,
                task.statistics_batches(device, epoch),
                lambda: autocast(device, options.amp),
            )
        means = (sums / max(n_seen, 1)).tolist() if sums is not None else []
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in zip(terms, means, strict=False)})
        row.update({"train_volumes_per_s": n_seen / seconds, "seconds": seconds})
        if task.epoch_extra is not None:
            row.update(task.epoch_extra(model))
        if task.evaluate is not None:
            row.update({f"test_{k}": v for k, v in task.evaluate(model, device).items()})
        if options.lr_schedule != "constant":
            row["learning_rate"] = lr
        if task.validate is not None:
            _early_stopping(model, task.validate(model, device), epoch, best, options, row)
        history.append(row)
        bar.set_postfix(loss=f"{row.get('train_loss', float('nan')):.4f}")
        _save_checkpoint(
            out / CHECKPOINT,
            {
                "model_name": getattr(model, "name", None),
                "hparams": getattr(model, "hparams", {}),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "history": history,
                "scale": (0.0, 1.0),
                "task": "generative",
                "classes": [],
                **task.checkpoint,
                "options": options.model_dump(),
                "best": best,
            },
        )
        _write_log(out / "log.csv", history)
        if best["stopped"]:
            logger.info("%s: early stop after epoch %d (best %d)", name, epoch, best["epoch"])
            break
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return history, device, ckpt


def _early_stopping(
    model: nn.Module,
    metrics: dict[str, float],
    epoch: int,
    best: dict[str, Any],
    options: ModelOptions,
    row: dict[str, Any],
) -> None:
    """Log the validation ``metrics`` in ``row``; keep the weights of a new lowest validation
    loss in ``best`` and mark it ``stopped`` after ``options.patience`` epochs without one."""
    row.update({f"val_{k}": v for k, v in metrics.items()})
    loss = float(metrics["loss"])
    if loss < best["loss"]:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best.update(epoch=epoch, loss=loss, state=state)
    row["best_epoch"] = best["epoch"]
    if options.patience and epoch - best["epoch"] >= options.patience:
        best["stopped"] = True


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    lines = [",".join(cols)]
    lines += [",".join(_fmt(row.get(c, "")) for c in cols) for row in history]
    write_text(path, "\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
