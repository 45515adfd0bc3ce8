"""Training: one engine, a step function per task, and the ``symprep train`` entry points.

- :mod:`._engine`: :func:`run_training`, the one training engine (device, AMP, seeding per
  epoch, checkpoint/resume, the epoch loop, the learning-rate schedule, early stopping on a
  validation split, ``log.csv``), and :class:`TrainingTask`, what differs between tasks;
- :mod:`._supervised`: :func:`fit` (classification or regression of volumes, rotation
  augmentation by :func:`augment_batch`) and :func:`evaluate`;
- :mod:`._vae`: :func:`fit_vae` and :func:`vae_step` (the β-weighted negative ELBO),
  :func:`train_vae` for in-memory volumes;
- :mod:`._bids`: :func:`train_from_bids`, which reads a BIDS folder and its derivatives, splits
  by site and trains the model ``options.model`` names (the VAE without a target).

The ROI models (:mod:`pipeline.models.roi_experiment`) are a task of the same engine.
"""

from pipeline.models.training._bids import DEFAULT_LATENT_DIM, train_from_bids
from pipeline.models.training._engine import (
    CHECKPOINT,
    TrainingTask,
    autocast,
    epoch_learning_rate,
    load_checkpoint,
    run_training,
    seed_everything,
    select_device,
    stratified_holdout,
)
from pipeline.models.training._supervised import EPSILON_VOLUMES, augment_batch, evaluate, fit
from pipeline.models.training._vae import fit_vae, train_vae, vae_step

__all__ = [
    "CHECKPOINT",
    "DEFAULT_LATENT_DIM",
    "EPSILON_VOLUMES",
    "TrainingTask",
    "augment_batch",
    "autocast",
    "epoch_learning_rate",
    "evaluate",
    "fit",
    "fit_vae",
    "load_checkpoint",
    "run_training",
    "select_device",
    "seed_everything",
    "stratified_holdout",
    "train_from_bids",
    "train_vae",
    "vae_step",
]
