"""``symprep train``: train one model on preprocessed volumes with labels from participants.tsv.

Examples::

    symprep train BIDS_DIR DERIVATIVES_DIR --model steerable --target diagnosis \\
        --split leave-site-out --epochs 30 --output-dir DERIVATIVES_DIR/group/models/steerable
    symprep train BIDS_DIR DERIVATIVES_DIR --model vae \\
        --hparams '{"latent_dim": 16, "encoder": "octahedral", "beta": 0.5}'
    symprep train BIDS_DIR DERIVATIVES_DIR --config my.yaml --run vae   # one of models.runs

The VAE needs no target column; its evaluation (reconstruction MSE/SSIM, invariance of the latent
mean, site predictability) and figures are written beside ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.models.options import ModelOptions

logger = logging.getLogger(__name__)

# command-line flag -> ModelOptions field (only flags given on the command line override)
_FLAGS: dict[str, dict[str, Any]] = {
    "model": {"choices": ["cnn", "octahedral", "steerable", "relaxed", "vae", "roiset"]},
    "target": {},
    "task": {"choices": ["auto", "classification", "regression"]},
    "input_pattern": {},
    "split": {"choices": ["stratified", "leave-site-out"]},
    "test_fraction": {"type": float},
    "test_sites": {"nargs": "+"},
    "downsample": {"type": int},
    "epochs": {"type": int},
    "batch_size": {"type": int},
    "learning_rate": {"type": float},
    "weight_decay": {"type": float},
    "symmetry_penalty": {"type": float},
    "augment": {"choices": ["none", "so3", "cube"]},
    "device": {"choices": ["auto", "cuda", "cpu"]},
    "seed": {"type": int},
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on the ``symprep`` subcommand parser and return its parser."""
    p = subparsers.add_parser(
        "train",
        help="train a (rotation-equivariant) 3D model or the VAE on preprocessed volumes",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("bids_dir", type=Path, help="BIDS dataset (its participants.tsv has the labels)")
    p.add_argument("derivatives_dir", type=Path, help="symprep output folder with the volumes")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where checkpoint, log.csv and metrics.json go "
        "(default: DERIVATIVES_DIR/group/models/MODEL)",
    )
    for name, kw in _FLAGS.items():
        desc = ModelOptions.model_fields[name].description or ""
        default = ModelOptions.model_fields[name].default
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=f"{desc} (default: {default})",
            **kw,
        )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML configuration file: its models: section is the base the flags override",
    )
    p.add_argument(
        "--run",
        default=None,
        metavar="NAME",
        help="train the run NAME of the configuration's models.runs (its options, and "
        "DERIVATIVES_DIR/group/models/NAME as the default output folder)",
    )
    p.add_argument(
        "--hparams",
        type=json.loads,
        default=None,
        help="model hyperparameters as JSON, e.g. '{\"widths\": [8, 16, 32]}'",
    )
    p.add_argument("--no-resume", action="store_true", help="start afresh, ignoring a checkpoint")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from pipeline.models.roi_experiment import add_arguments as add_roi_arguments

    add_roi_arguments(p)  # --model roiset: ROI series, leave-site-out CV, ComBat, baselines
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace, base: ModelOptions | None = None) -> ModelOptions:
    """``base`` (e.g. the ``models:`` section of the configuration) updated by the given flags."""
    values = (base or ModelOptions()).model_dump()
    values.update({k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None})
    if getattr(args, "hparams", None) is not None:
        values["hparams"] = args.hparams
    values["resume"] = values["resume"] and not getattr(args, "no_resume", False)
    values["amp"] = values["amp"] and not getattr(args, "no_amp", False)
    values["progress"] = values["progress"] and not getattr(args, "no_progress", False)
    try:
        return ModelOptions(**values)
    except ValueError as exc:  # pydantic.ValidationError
        from pipeline.errors import ConfigError

        first = str(exc).splitlines()
        raise ConfigError(f"invalid train option: {' '.join(first[1:3]).strip()}") from exc


def run(args: argparse.Namespace) -> int:
    """Train the model described by ``args``; return 0 on success."""
    from pipeline.models.training import train_from_bids

    base = getattr(args, "model_options", None)
    if base is None and getattr(args, "config", None) is not None:
        from pipeline.config import load_config

        base = load_config(args.config).models
    run_name = getattr(args, "run", None)
    if run_name is not None:
        from pipeline.errors import ConfigError

        # what the run sets itself wins over the defaults of its kind of model (ROI defaults)
        args.run_overrides = sorted((base or ModelOptions()).runs.get(run_name) or {})
        try:
            base = (base or ModelOptions()).for_run(run_name)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        if args.output_dir is None:
            args.output_dir = Path(args.derivatives_dir) / "group" / "models" / run_name
    opts = options_from_args(args, base)
    if opts.model == "roiset":  # FC of ROI series, leave-site-out CV beside the baselines
        from pipeline.models.roi_experiment import run_from_args

        overall = run_from_args(args, opts)["overall"]
        logger.info("leave-site-out accuracy: %s", ", ".join(
            f"{m} {v['accuracy']:.3f}" for m, v in overall.items()))  # fmt: skip
        return 0
    out = args.output_dir or Path(args.derivatives_dir) / "group" / "models" / opts.model
    metrics = train_from_bids(args.bids_dir, args.derivatives_dir, out, opts)
    test = metrics.get("test", {})
    summary = ", ".join(f"{k} {v:.3f}" for k, v in test.items()) or "no test set"
    logger.info("trained %s: %s; results in %s", opts.model, summary, out)
    return 0
