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
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
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
    "augment_batch",
    "evaluate",
    "fit",
    "fit_vae",
    "load_checkpoint",
    "select_device",
    "seed_everything",
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
        added to the loss, scaled by ``options.symmetry_penalty`` through the model's ``penalty``).
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
    from tqdm.auto import tqdm

    opts = options or ModelOptions()
    if hasattr(model, "penalty"):
        model.penalty = opts.symmetry_penalty
    out, device, optimizer, scaler = _prepare(model, opts, out_dir)
    if task == "regression":
        ys = torch.stack([train_data[i][1] for i in range(len(train_data))]).float()
        scale = (float(ys.mean()), float(ys.std().clamp(min=1e-6)) if len(ys) > 1 else 1.0)
    else:
        scale = (0.0, 1.0)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = _resume(out / CHECKPOINT, model, optimizer, scaler, device, opts, check_hparams=False)
    if ckpt is not None:
        history, start_epoch, scale = ckpt["history"], ckpt["epoch"] + 1, tuple(ckpt["scale"])

    n_steps = math.ceil(len(train_data) / opts.batch_size)
    bar = tqdm(
        total=(opts.epochs - start_epoch) * n_steps,
        desc=f"train {getattr(model, 'name', 'model')}",
        unit="step",
        disable=not opts.progress,
    )
    for epoch in range(start_epoch, opts.epochs):
        gen, rng = _epoch_generator(opts.seed, epoch)
        loader = DataLoader(train_data, batch_size=opts.batch_size, shuffle=True, generator=gen)
        model.train()
        t0, total, n_seen = time.perf_counter(), torch.zeros((), device=device), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if task == "regression":
                y = (y.float() - scale[0]) / scale[1]
            x = augment_batch(x, opts.augment, rng)
            with _autocast(device, opts.amp):
                loss = _loss(task, model(x), y)
            if hasattr(model, "symmetry_penalty"):
                loss = loss + model.symmetry_penalty()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach() * len(x)
            n_seen += len(x)
            bar.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(total) / max(n_seen, 1),
            "train_volumes_per_s": n_seen / seconds,
            "seconds": seconds,
        }
        if hasattr(model, "symmetry_defect"):
            row["symmetry_defect"] = float(model.symmetry_defect().detach())
        if test_data is not None and len(test_data):
            metrics = evaluate(model, test_data, task, device, opts.batch_size, opts.amp, scale)
            row.update({f"test_{k}": v for k, v in metrics.items()})
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}")
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
                "scale": scale,
                "task": task,
                "classes": classes or [],
                "options": opts.model_dump(),
            },
        )
        _write_log(out / "log.csv", history)
    bar.close()

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
    if test_data is not None and len(test_data):
        result["test"] = evaluate(model, test_data, task, device, opts.batch_size, opts.amp, scale)
    write_json(out / "metrics.json", result)
    return result


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
    from tqdm.auto import tqdm

    from pipeline.models.vae_report import reconstruction_metrics

    opts = options or ModelOptions()
    out, device, optimizer, scaler = _prepare(model, opts, out_dir)
    name = getattr(model, "name", "vae")

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = _resume(out / CHECKPOINT, model, optimizer, scaler, device, opts, check_hparams=True)
    if ckpt is not None:
        history, start_epoch = ckpt["history"], ckpt["epoch"] + 1

    has_test = test_data is not None and len(test_data) > 0
    n_steps = math.ceil(len(train_data) / opts.batch_size)
    bar = tqdm(
        total=(opts.epochs - start_epoch) * n_steps,
        desc=f"train {name}",
        unit="step",
        disable=not opts.progress,
    )
    keys = ("loss", "recon", "kl")
    for epoch in range(start_epoch, opts.epochs):
        gen, rng = _epoch_generator(opts.seed, epoch)
        noise = _noise_generator(opts.seed, epoch, device)
        loader = DataLoader(train_data, batch_size=opts.batch_size, shuffle=True, generator=gen)
        model.train()
        t0, sums, n_seen = time.perf_counter(), torch.zeros(3, device=device), 0
        for batch in loader:
            x = (batch[0] if isinstance(batch, list | tuple) else batch).to(
                device, non_blocking=True
            )
            x = augment_batch(x, opts.augment, rng)
            with _autocast(device, opts.amp):
                terms = model.loss(x, noise)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            sums += torch.stack([terms[k].detach() for k in keys]) * len(x)
            n_seen += len(x)
            bar.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        means = (sums / max(n_seen, 1)).tolist()
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in zip(keys, means, strict=True)})
        row.update({"train_volumes_per_s": n_seen / seconds, "seconds": seconds})
        if has_test:
            terms_test = reconstruction_metrics(
                model, test_data, device, opts.batch_size, opts.amp, ssim=False
            )
            row.update({f"test_{k}": v for k, v in terms_test.items()})
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}")
        _save_checkpoint(
            out / CHECKPOINT,
            {
                "model_name": name,
                "hparams": getattr(model, "hparams", {}),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "history": history,
                "scale": (0.0, 1.0),
                "task": "generative",
                "classes": [],
                "options": opts.model_dump(),
            },
        )
        _write_log(out / "log.csv", history)
    bar.close()

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
    write_json(out / "metrics.json", result)
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
        )

    return fit_vae(model, train, test, out, opts, report)
