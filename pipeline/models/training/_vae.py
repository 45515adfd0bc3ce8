"""The VAE task: the β-weighted negative ELBO as a step of the engine.

:func:`fit_vae` trains a :class:`~pipeline.models.VAE` with
:func:`~pipeline.models.training.run_training` (no targets; the loss is logged per epoch with its
reconstruction and KL terms) and adds the evaluation of :mod:`pipeline.models.vae_report` to
``metrics.json``; :func:`train_vae` does the same for in-memory volumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.io import write_json
from pipeline.models._layers import n_parameters
from pipeline.models.options import ModelOptions
from pipeline.models.training._engine import TrainingTask, run_training
from pipeline.models.training._supervised import augment_batch

logger = logging.getLogger(__name__)

__all__ = ["fit_vae", "train_vae", "vae_step"]


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
