"""3D models for brain volumes: plain CNN, octahedral group CNN, SO(3)-steerable CNN, relaxed group
CNN, and a VAE (optionally with a rotation-invariant encoder).

Use :func:`build_model`; training lives in :mod:`pipeline.models.training`.
"""

from pipeline.models._layers import (
    BlurPool3d,
    centred_size,
    is_centred_size,
    n_parameters,
    pad_to_centred,
)
from pipeline.models._registry import MODEL_NAMES, build_model
from pipeline.models.training import train_vae
from pipeline.models.vae import VAE

__all__ = [
    "MODEL_NAMES",
    "VAE",
    "BlurPool3d",
    "build_model",
    "centred_size",
    "is_centred_size",
    "n_parameters",
    "pad_to_centred",
    "train_vae",
]
