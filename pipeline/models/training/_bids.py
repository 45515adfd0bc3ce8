"""``symprep train`` on volumes: read labels and volumes from a BIDS folder and its derivatives,
split by site, and train the supervised model (:func:`~pipeline.models.training.fit`) or the VAE
(:func:`~pipeline.models.training.fit_vae`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.io import write_text
from pipeline.models.options import ModelOptions
from pipeline.models.training._engine import seed_everything
from pipeline.models.training._supervised import fit
from pipeline.models.training._vae import fit_vae

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LATENT_DIM", "train_from_bids"]


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
    out = Path(out_dir)
    train, test = _split(full, table, train_idx, test_idx, table["target"], out)
    return fit(model, train, test, out, opts, task, classes)


def _split(
    full: torch.utils.data.Dataset,
    table: Any,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    targets: Any,
    out: Path,
) -> tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """The training and test parts of ``full``; writes ``split.tsv`` (participant, site, target,
    fold) into ``out``."""
    fold = np.where(np.isin(np.arange(len(table)), test_idx), "test", "train")
    rows = ["participant_id\tsite\ttarget\tfold"] + [
        f"sub-{lab}\t{site}\t{t}\t{f}"
        for lab, site, t, f in zip(table.index, table["site"], targets, fold, strict=True)
    ]
    write_text(out / "split.tsv", "\n".join(rows) + "\n")
    return (
        torch.utils.data.Subset(full, train_idx.tolist()),
        torch.utils.data.Subset(full, test_idx.tolist()),
    )


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
    out = Path(out_dir)
    train, test = _split(full, table, train_idx, test_idx, ["n/a"] * len(table), out)

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
