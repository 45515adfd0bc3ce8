"""``build_model(name, in_channels, num_outputs, **hparams)``: the one constructor of every
model."""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.errors import ConfigError

__all__ = ["ALL_MODEL_NAMES", "MODEL_NAMES", "build_model"]

#: classifiers/regressors of the symmetry grid
MODEL_NAMES = ("cnn", "octahedral", "steerable", "relaxed")
#: every name build_model accepts (the VAE's forward returns the latent mean)
ALL_MODEL_NAMES = (*MODEL_NAMES, "vae", "roiset")


def _classes() -> dict[str, type[nn.Module]]:
    from pipeline.models.cnn import CNN3d
    from pipeline.models.octahedral import OctahedralCNN, RelaxedOctahedralCNN
    from pipeline.models.roiset import RoiSet
    from pipeline.models.steerable import SteerableCNN
    from pipeline.models.vae import VAE

    return {
        "cnn": CNN3d,
        "octahedral": OctahedralCNN,
        "steerable": SteerableCNN,
        "relaxed": RelaxedOctahedralCNN,
        "vae": VAE,
        "roiset": RoiSet,  # ROI tokens (B, N, F), permutation invariant
    }


def build_model(name: str, in_channels: int, num_outputs: int, **hparams: Any) -> nn.Module:
    """Build a model mapping ``(B, in_channels, X, Y, Z)`` to ``(B, num_outputs)``.

    Parameters
    ----------
    name : {"cnn", "octahedral", "steerable", "relaxed", "vae"}
        ``cnn``: plain 3D CNN; ``octahedral``: group CNN over the 24 cube rotations;
        ``steerable``: SO(3)-steerable CNN (e3nn); ``relaxed``: relaxed octahedral group CNN.
    in_channels, num_outputs : int
        Input channels and outputs (logits or regression targets).
    **hparams
        Passed to the model class (``widths``, ``steps``, ``lmax``, ``diameter``, ``banks``,
        ``penalty`` …); see each class.

    Returns
    -------
    torch.nn.Module
        With attributes ``name`` and ``hparams`` (enough to rebuild it from a checkpoint) and
        ``levels`` (number of stride-2 stages). Stride lattices are centred at any input size
        (see :mod:`pipeline.models._layers`): the invariant models hold their cube-rotation
        invariance for every shape, cubic or not.

    Examples
    --------
    >>> import torch
    >>> model = build_model("octahedral", 1, 2)
    >>> model(torch.zeros(1, 1, 17, 17, 17)).shape
    torch.Size([1, 2])
    """
    classes = _classes()
    if name not in classes:
        raise ConfigError(f"model name must be one of {', '.join(ALL_MODEL_NAMES)}; got {name!r}")
    try:
        model = classes[name](in_channels, num_outputs, **hparams)
    except TypeError as exc:
        raise ConfigError(f"invalid hyperparameters for model {name!r}: {exc}") from exc
    model.name = name
    model.hparams = {"in_channels": in_channels, "num_outputs": num_outputs, **hparams}
    return model
