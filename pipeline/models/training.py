"""Training loop: device choice, mixed precision, seeds, checkpoints and resume, metrics and logs.

:func:`fit` trains any model from :func:`~pipeline.models.build_model` on two datasets of
``(volume, target)`` pairs and writes into ``out_dir``:

- ``checkpoint.pt``: model, optimizer and scaler state, epoch, history, target scaling (written
  atomically after every epoch; a rerun with ``resume=True`` continues from it and gives exactly
  the steps an uninterrupted run would have taken, because shuffling and augmentation are seeded
  per epoch);
- ``log.csv``: one row per epoch (losses, metrics, throughput, seconds);
- ``metrics.json``: the final metrics, parameter count, device and per-epoch history.

:func:`fit_vae` does the same for the :class:`~pipeline.models.VAE` (no targets; the loss is the
β-weighted negative ELBO, logged per epoch with its reconstruction and KL terms) and adds the
evaluation of :mod:`pipeline.models.vae_report` to ``metrics.json``. :func:`train_from_bids`
picks the one that fits ``options.model``.

There is one training engine, :func:`run_training` (device, AMP, seeding, checkpoint/resume, the
epoch loop, logs); each task is a :class:`TrainingTask` with its step function: supervised
(:func:`fit`), VAE (:func:`fit_vae`, :func:`vae_step`; :func:`train_vae` for in-memory volumes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import ConfigError
from pipeline.io import atomic_path, write_json, write_text
from pipeline.models._layers import n_parameters
from pipeline.models.device import autocast as _autocast
from pipeline.models.device import select_device
from pipeline.models.options import ModelOptions
from pipeline.symmetry import cube_rotations, random_rotations, rotate_cube, rotate_volume

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingTask",
    "augment_batch",
    "evaluate",
    "fit",
    "fit_vae",
    "load_checkpoint",
    "run_training",
    "select_device",
    "seed_everything",
    "train_vae",
    "vae_step",
]

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds libraries that use the global state
    torch.manual_seed(seed)


def _epoch_generator(seed: int, epoch: int) -> tuple[torch.Generator, np.random.Generator]:
    ss = np.random.SeedSequence([seed, epoch])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0] % 2**63))
    return g, np.random.default_rng(ss)


def _noise_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Generator of the VAE's reparameterization noise for one epoch, on ``device``."""
    ss = np.random.SeedSequence([seed, epoch, 1])
    g = torch.Generator(device=device)
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0] % 2**63))
    return g


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
        with _autocast(device, amp):
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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` (maps tensors to ``device``)."""
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
    checkpoint : dict
        Task fields saved in every checkpoint (``task``, ``classes``, ``scale``).
    check_hparams : bool
        Refuse to resume from a checkpoint with other hyperparameters.
    epoch_extra : callable or None
        ``epoch_extra(model) -> dict`` of extra per-epoch log values.
    """

    step: Callable[..., dict[str, torch.Tensor]]
    evaluate: Callable[[nn.Module, torch.device], dict[str, float]] | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    check_hparams: bool = False
    epoch_extra: Callable[[nn.Module], dict[str, float]] | None = None


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
    uninterrupted run would have taken (shuffling, augmentation and noise are seeded per epoch).

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
    if ckpt is not None:
        history, start_epoch = ckpt["history"], ckpt["epoch"] + 1
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
        model.train()
        t0, sums, n_seen = time.perf_counter(), None, 0
        for batch in loader:
            terms = task.step(
                model, batch, rng, noise, device, lambda: _autocast(device, options.amp)
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
        means = (sums / max(n_seen, 1)).tolist() if sums is not None else []
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in zip(terms, means, strict=False)})
        row.update({"train_volumes_per_s": n_seen / seconds, "seconds": seconds})
        if task.epoch_extra is not None:
            row.update(task.epoch_extra(model))
        if task.evaluate is not None:
            row.update({f"test_{k}": v for k, v in task.evaluate(model, device).items()})
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
            },
        )
        _write_log(out / "log.csv", history)
    bar.close()
    return history, device, ckpt


def fit(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None,
    out_dir: str | os.PathLike[str],
    options: ModelOptions | None = None,
    task: str = "classification",
    classes: list | None = None,
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
        Epochs, batch size, optimiser, augmentation, device, AMP, seed, resume, progress.
    task : {"classification", "regression"}
        Loss: cross-entropy on logits, or MSE on standardised targets.
    classes : list, optional
        Class names, recorded in the metrics.

    Returns
    -------
    dict
        The metrics also written to ``metrics.json``.
    """
    opts = options or ModelOptions()
    if hasattr(model, "penalty"):
        model.penalty = opts.symmetry_penalty
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
            checkpoint={"scale": scale, "task": task, "classes": classes or []},
            epoch_extra=extra,
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
    if has_test:
        result["test"] = evaluate(model, test_data, task, device, opts.batch_size, opts.amp, scale)
    if hasattr(model, "measured_epsilon"):  # relaxed models: their own measured epsilon
        x = _first_volumes(test_data if has_test else train_data, EPSILON_VOLUMES)
        result["epsilon"] = model.measured_epsilon(x, opts.batch_size)
        logger.info("%s: measured epsilon %.3g (mean %.3g) on %d %s volumes",
                    result["model"], result["epsilon"]["epsilon"],
                    result["epsilon"]["epsilon_mean"], len(x),
                    "test" if has_test else "train")  # fmt: skip
        result["epsilon"]["measured_on"] = "test" if has_test else "train"
    write_json(Path(out_dir) / "metrics.json", result)
    return result


#: volumes the relaxed model's epsilon is measured on at the end of :func:`fit`
EPSILON_VOLUMES = 8


def _first_volumes(data: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` volumes of ``data`` (items are volumes or ``(volume, ...)``), stacked."""
    items = [data[i] for i in range(min(n, len(data)))]
    return torch.stack([v[0] if isinstance(v, list | tuple) else v for v in items])


def vae_step(
    model, batch, rng, noise, device, amp=contextlib.nullcontext, augment: str = "none"
) -> dict[str, torch.Tensor]:
    """One VAE step: the β-weighted negative ELBO and its reconstruction and KL terms."""
    x = (batch[0] if isinstance(batch, list | tuple) else batch).to(device, non_blocking=True)
    x = augment_batch(x, augment, rng)
    with amp():
        terms = model.loss(x, noise)
    return {k: terms[k] for k in ("loss", "recon", "kl")}


def fit_vae(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None,
    out_dir: str | os.PathLike[str],
    options: ModelOptions | None = None,
    report: Callable[[nn.Module, torch.device], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train a :class:`~pipeline.models.VAE`; write checkpoint, ``log.csv`` and ``metrics.json``.

    The loss is the model's β-weighted negative ELBO per voxel (:meth:`VAE.loss`). Each epoch
    logs ``train_loss``, ``train_recon``, ``train_kl`` (with sampled :math:`z`) and, with a test
    set, ``test_loss``, ``test_recon``, ``test_kl`` (with :math:`z = \\mu`). Shuffling,
    augmentation and the reparameterization noise are seeded per epoch, so a resumed run takes
    the steps an uninterrupted one would have taken, and the same seed gives the same model on
    CPU.

    Parameters
    ----------
    model : VAE
        From ``build_model("vae", ...)``.
    train_data, test_data : Dataset
        Volumes ``(C, X, Y, Z)`` or ``(volume, anything)`` pairs (the second item is ignored);
        ``test_data`` may be None.
    out_dir : path-like
        Output folder (created).
    options : ModelOptions, optional
        Epochs, batch size, optimiser, augmentation, device, AMP, seed, resume, progress.
    report : callable, optional
        ``report(model, device) -> dict`` run after training; its keys are added to the metrics
        (see :func:`pipeline.models.vae_report.vae_report`).

    Returns
    -------
    dict
        The metrics also written to ``metrics.json``: ``train`` and ``test`` hold ``loss``,
        ``kl``, ``mse`` and ``ssim`` (see :func:`~pipeline.models.vae_report.reconstruction_metrics`).
    """
    from pipeline.models.vae_report import reconstruction_metrics

    opts = options or ModelOptions()
    name = getattr(model, "name", "vae")
    has_test = test_data is not None and len(test_data) > 0
    history, device, _ = run_training(
        model,
        train_data,
        out_dir,
        opts,
        TrainingTask(
            step=lambda m, b, r, n, d, a: vae_step(m, b, r, n, d, a, opts.augment),
            evaluate=(
                (
                    lambda m, d: reconstruction_metrics(
                        m, test_data, d, opts.batch_size, opts.amp, ssim=False
                    )
                )
                if has_test
                else None
            ),
            check_hparams=True,
        ),
    )
    model.eval()
    result: dict[str, Any] = {
        "model": name,
        "n_parameters": n_parameters(model),
        "device": str(device),
        "task": "generative",
        "classes": [],
        "epochs": opts.epochs,
        "latent_dim": int(getattr(model, "latent_dim", 0)),
        "encoder": getattr(model, "encoder_kind", ""),
        "beta": float(getattr(model, "beta", 1.0)),
        "n_train": len(train_data),
        "n_test": len(test_data) if test_data is not None else 0,
        "history": history,
        "train": reconstruction_metrics(model, train_data, device, opts.batch_size, opts.amp),
    }
    if has_test:
        result["test"] = reconstruction_metrics(model, test_data, device, opts.batch_size, opts.amp)
    if report is not None:
        result.update(report(model, device))
    write_json(Path(out_dir) / "metrics.json", result)
    return result


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    lines = [",".join(cols)]
    lines += [",".join(_fmt(row.get(c, "")) for c in cols) for row in history]
    write_text(path, "\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def train_from_bids(
    bids_dir: str | os.PathLike[str],
    derivatives_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: ModelOptions | None = None,
) -> dict[str, Any]:
    """Read labels and volumes, split by site, build the model and :func:`fit` it.

    Also writes ``split.tsv`` (participant, site, target, fold) into ``out_dir``. For
    ``options.model == "vae"`` see :func:`_train_vae_from_bids` (no target needed).
    """
    from pipeline.models._registry import build_model
    from pipeline.models.data import (
        VolumeDataset,
        encode_labels,
        find_volumes,
        read_participants,
        site_split,
    )

    opts = options or ModelOptions()
    if opts.model == "vae":
        return _train_vae_from_bids(bids_dir, derivatives_dir, out_dir, opts)
    table = read_participants(bids_dir, opts.target)
    y, task, classes = encode_labels(table["target"], opts.task)
    train_idx, test_idx = site_split(
        table, opts.split, opts.test_fraction, opts.test_sites or None, opts.seed
    )
    paths = find_volumes(derivatives_dir, list(table.index), opts.input_pattern)
    seed_everything(opts.seed)
    n_out = len(classes) if task == "classification" else 1
    model = build_model(opts.model, 1, n_out, **opts.hparams)
    levels = getattr(model, "levels", 0)
    logger.info("loading %d volumes (downsample %d)", len(paths), opts.downsample)
    full = VolumeDataset(paths, y, levels, opts.downsample)
    train = torch.utils.data.Subset(full, train_idx.tolist())
    test = torch.utils.data.Subset(full, test_idx.tolist())
    out = Path(out_dir)
    fold = np.where(np.isin(np.arange(len(table)), test_idx), "test", "train")
    split_rows = ["participant_id\tsite\ttarget\tfold"] + [
        f"sub-{lab}\t{site}\t{t}\t{f}"
        for lab, site, t, f in zip(table.index, table["site"], table["target"], fold, strict=True)
    ]
    write_text(out / "split.tsv", "\n".join(split_rows) + "\n")
    return fit(model, train, test, out, opts, task, classes)


#: latent dimension of the VAE when ``models.hparams`` has no ``latent_dim``
DEFAULT_LATENT_DIM = 16


def _train_vae_from_bids(
    bids_dir: str | os.PathLike[str],
    derivatives_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    opts: ModelOptions,
) -> dict[str, Any]:
    """Train the VAE on every participant's volume of the training part and evaluate it.

    The target column is not used (and may be absent): the split is stratified by site (or holds
    out ``test_sites``). ``opts.hparams`` gives ``latent_dim`` (default
    :data:`DEFAULT_LATENT_DIM`) and the :class:`~pipeline.models.VAE` arguments (``encoder``,
    ``beta``, ``widths``, ``encoder_hparams``); the grid ``shape`` comes from the volumes.
    Writes ``split.tsv``, then everything :func:`fit_vae` writes, with the evaluation of
    :func:`~pipeline.models.vae_report.vae_report` (and its figures) in ``metrics.json``.
    """
    from pipeline.models._registry import build_model
    from pipeline.models.data import VolumeDataset, find_volumes, read_participants, site_split
    from pipeline.models.vae_report import vae_report

    hparams = dict(opts.hparams)
    latent = hparams.pop("latent_dim", DEFAULT_LATENT_DIM)
    if not isinstance(latent, int) or isinstance(latent, bool) or latent < 1:
        raise ConfigError(f"VAE hparams: latent_dim must be a positive integer; got {latent!r}")
    if "shape" in hparams:
        raise ConfigError("VAE hparams: 'shape' is set from the input volumes; remove it")
    table = read_participants(bids_dir, target="site")  # the site stands in for the target
    train_idx, test_idx = site_split(
        table, opts.split, opts.test_fraction, opts.test_sites or None, opts.seed
    )
    paths = find_volumes(derivatives_dir, list(table.index), opts.input_pattern)
    # the padded grid depends on the stride-2 stages: ask a throwaway model for them
    levels = build_model("vae", 1, latent, **hparams).levels
    logger.info("loading %d volumes (downsample %d)", len(paths), opts.downsample)
    sites = table["site"].astype(str).to_numpy()
    full = VolumeDataset(paths, np.zeros(len(paths), np.int64), levels, opts.downsample)
    seed_everything(opts.seed)
    model = build_model("vae", 1, latent, shape=tuple(full.volumes.shape[-3:]), **hparams)
    train = torch.utils.data.Subset(full, train_idx.tolist())
    test = torch.utils.data.Subset(full, test_idx.tolist())
    out = Path(out_dir)
    fold = np.where(np.isin(np.arange(len(table)), test_idx), "test", "train")
    split_rows = ["participant_id\tsite\ttarget\tfold"] + [
        f"sub-{lab}\t{site}\tn/a\t{f}"
        for lab, site, f in zip(table.index, sites, fold, strict=True)
    ]
    write_text(out / "split.tsv", "\n".join(split_rows) + "\n")

    def report(trained: nn.Module, device: torch.device) -> dict[str, Any]:
        return vae_report(
            trained,
            full.volumes,
            sites,
            train_idx,
            test_idx,
            out,
            device,
            paths=paths,
            downsample=opts.downsample,
            batch_size=opts.batch_size,
            seed=opts.seed,
            progress=opts.progress,
            pose_inputs={  # demo datasets: real poses vs the un-posed ground truth
                "bids_dir": bids_dir,
                "derivatives_dir": derivatives_dir,
                "labels": list(table.index),
                "pattern": opts.input_pattern,
            },
        )

    return fit_vae(model, train, test, out, opts, report)


def train_vae(
    model: nn.Module,
    volumes: torch.Tensor,
    epochs: int = 10,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fit ``model`` to in-memory ``volumes`` ``(N, C, X, Y, Z)``; return per-epoch mean losses.

    The training engine of :func:`pipeline.models.training.run_training` with the VAE step (no
    weight decay, no augmentation, on the model's device), its checkpoint in a temporary folder.
    """
    import tempfile

    from torch.utils.data import TensorDataset

    device = next(model.parameters()).device
    options = ModelOptions(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.0,
        seed=seed,
        device="cuda" if device.type == "cuda" else "cpu",
        amp=False,
        resume=False,
        progress=progress,
    )
    with tempfile.TemporaryDirectory() as tmp:
        history, _, _ = run_training(
            model, TensorDataset(volumes), tmp, options, TrainingTask(step=vae_step)
        )
    model.eval()
    return [
        {
            "loss": r["train_loss"],
            "recon": r["train_recon"],
            "kl": r["train_kl"],
            "epoch": r["epoch"],
        }
        for r in history
    ]
