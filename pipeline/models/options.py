"""Options of the model stage (the ``models:`` section of the configuration)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from pipeline._options import StrictOptions

DEFAULT_PATTERN = (
    "sub-{label}/anat/sub-{label}_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz"
)


class ModelOptions(StrictOptions):
    """Group model stage: rotation-equivariant 3D CNNs and the VAE."""

    enabled: bool = Field(False, description="Train models in the group stage.")
    model: Literal["cnn", "octahedral", "steerable", "relaxed", "vae", "roiset"] = Field(
        "steerable",
        description="Architecture: plain 3D CNN, octahedral group CNN, SO(3)-steerable CNN (e3nn), "
        "relaxed (approximately equivariant) octahedral CNN, or the 3D VAE (unsupervised; "
        "evaluated for reconstruction, invariance of its latent mean and site predictability).",
    )
    hparams: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra model hyperparameters passed to build_model (e.g. widths, lmax, "
        "diameter, banks; for the VAE: latent_dim (default 16), encoder (cnn, octahedral or "
        "steerable), beta (KL weight, default 1), widths, encoder_hparams).",
    )
    target: str = Field(
        "diagnosis", description="Column of participants.tsv to predict (not used by the VAE)."
    )
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="Classification for categorical targets, regression for numbers."
    )
    input_pattern: str = Field(
        DEFAULT_PATTERN,
        description="Input volume path under the derivatives folder; {label} is the participant.",
    )
    split: Literal["stratified", "leave-site-out"] = Field(
        "stratified",
        description="Site-aware split: stratified by site × class, or hold out whole sites.",
    )
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="Test fraction per stratum (stratified split)."
    )
    test_sites: list[str] = Field(
        default_factory=list,
        description="Held-out sites for leave-site-out (default: the last site in sorted order).",
    )
    downsample: int = Field(
        2, ge=1, description="Average-pooling factor on load (2: 2 mm volumes to 4 mm)."
    )
    epochs: int = Field(30, ge=1, description="Training epochs.")
    batch_size: int = Field(4, ge=1, description="Volumes per step.")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="Learning rate per epoch: constant, or cosine decay from learning_rate "
        "towards 0 over the epochs (after warmup_epochs of linear warmup).",
    )
    warmup_epochs: int = Field(
        0, ge=0, description="Epochs of linear learning-rate warmup (cosine schedule)."
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the training part held out (stratified by class) for early "
        "stopping: the weights of the epoch of lowest validation loss are kept (0: none).",
    )
    patience: int = Field(
        0,
        ge=0,
        description="With a validation split, stop after this many epochs without a lower "
        "validation loss (0: train every epoch, still keeping the best one).",
    )
    precise_statistics: bool = Field(
        True,
        description="Supervised models: after every epoch, recompute the running statistics "
        "of the batch normalisation layers over the unaugmented training set for that epoch's "
        "weights (precise BN), so that evaluation does not use averages that lag the weights "
        "or belong to augmented inputs.",
    )
    symmetry_penalty: float = Field(
        1e-2,
        ge=0,
        description="Weight of the symmetry-breaking penalty of the relaxed model "
        "(0: free symmetry breaking; large: nearly exact equivariance).",
    )
    augment: Literal["none", "so3", "cube"] = Field(
        "none",
        description="Random-rotation augmentation per batch: none, uniform SO(3) rotations "
        "(resampled) or the 24 exact cube rotations.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where to train: auto picks CUDA when present, CPU otherwise."
    )
    amp: bool = Field(True, description="Mixed precision (bfloat16/float16 autocast) on CUDA.")
    seed: int = Field(0, description="Seed of initialisation, shuffling, splits and augmentation.")
    resume: bool = Field(True, description="Resume from the checkpoint in the output folder.")
    progress: bool = Field(True, description="Show a progress bar.")
    runs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Several models in the group stage: run name -> options of this section "
        "that differ for that run (its model defaults to the name), each trained into "
        "group/models/NAME (`symprep train --run NAME`); empty: the one model above. E.g. "
        "{steerable: {}, vae: {hparams: {encoder: octahedral}}}.",
    )

    @field_validator("runs")
    @classmethod
    def _check_runs(cls, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in runs.items():
            if not _RUN_NAME.fullmatch(name):
                raise ValueError(f"run name {name!r}: use letters, digits, '-' and '_'")
            keys = set(overrides or {})
            bad = sorted((keys - set(cls.model_fields)) | (keys & {"runs"}))
            if bad:
                raise ValueError(f"run {name!r}: unknown or disallowed option(s) {bad}")
            try:  # each run must validate on its own
                cls(**_run_values(cls(), name, overrides or {}))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(map(str, err["loc"]))
                raise ValueError(f"run {name!r}: {where}: {err['msg']}") from None
        return runs

    def run_names(self) -> list[str]:
        """Names of the models the group stage trains: the ``runs``, or the one ``model``."""
        return list(self.runs) or [self.model]

    def for_run(self, name: str) -> ModelOptions:
        """The options of run ``name``: this section updated by ``runs[name]`` (no ``runs``).

        Raises
        ------
        KeyError
            ``name`` is not a run (nor, without runs, the configured ``model``).
        """
        if name not in self.runs:
            if not self.runs and name == self.model:
                return self
            raise KeyError(f"no model run {name!r} (runs: {', '.join(self.run_names())})")
        return type(self)(**_run_values(self, name, self.runs[name] or {}))


_RUN_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MODELS = ("cnn", "octahedral", "steerable", "relaxed", "vae", "roiset")


def _run_values(base: ModelOptions, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    values = base.model_dump()
    values["runs"] = {}
    if name in _MODELS:
        values["model"] = name
    values.update(overrides)
    return values
