"""Where models run: device selection and mixed precision, shared by training, evaluation and
the benchmarks (one definition, no import cycle between them)."""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import ConfigError

__all__ = ["autocast", "select_device"]


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when available, otherwise CPU; ``cuda`` without a GPU is a
    :class:`ConfigError`.

    >>> select_device("cpu")
    device(type='cpu')
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available (use 'auto')")
    if preference not in ("cuda", "cpu"):
        raise ConfigError(f"device must be 'auto', 'cuda' or 'cpu'; got {preference!r}")
    return torch.device(preference)


def autocast(device: torch.device, amp: bool):
    """Mixed precision on CUDA when ``amp`` (bfloat16 where supported, else float16); a no-op
    context on the CPU or without ``amp``."""
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
