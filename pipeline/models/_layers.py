r"""Layers shared by every model: anti-aliased strided pooling, input-size rules, invariant heads.

Stride lattice and exact invariance
-----------------------------------
A stride-2 layer with a symmetric kernel and padding ``size // 2`` samples input indices
:math:`0, 2, 4, \dots`. That set is mapped onto itself by the reversal :math:`i \mapsto N-1-i`
(and hence by all 24 rotations of a cube) only when :math:`N` is odd. With ``L`` downsampling
stages every level must stay odd, i.e. the input side must satisfy

.. math::

    N \equiv 1 \pmod{2^L}, \qquad\text{e.g. } L = 2: 17, 21, 25, 33, 65;\ L = 3: 17, 25, 33, 65, 97.

:func:`centred_size` gives the smallest such size and :func:`pad_to_centred` pads symmetrically.
For other sizes the models run but the cube-rotation invariance is only approximate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = ["BlurPool3d", "centred_size", "is_centred_size", "pad_to_centred"]


def centred_size(n: int, levels: int) -> int:
    """Smallest ``m >= n`` with ``m ≡ 1 (mod 2**levels)`` (keeps every stride lattice centred)."""
    q = 2**levels
    return n if (n - 1) % q == 0 else n + (q - (n - 1) % q)


def is_centred_size(shape: tuple[int, ...], levels: int) -> bool:
    """Whether every spatial side in ``shape`` satisfies ``N ≡ 1 (mod 2**levels)``."""
    return all((n - 1) % (2**levels) == 0 for n in shape)


def pad_to_centred(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Zero-pad the last three axes of ``x`` to :func:`centred_size`, split as evenly as possible.

    An odd amount of padding cannot be split symmetrically; the extra voxel goes at the end.
    """
    pads: list[int] = []
    for n in reversed(x.shape[-3:]):
        extra = centred_size(n, levels) - n
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads) if any(pads) else x


class BlurPool3d(nn.Module):
    r"""Anti-aliased downsampling: isotropic Gaussian blur, then stride 2 (Zhang 2019).

    .. math::

        k(u) \propto \exp\!\big(-\lVert S u \rVert^2 / 2\sigma^2\big),
        \quad \sigma = \tfrac{1}{2}\sqrt{s^2 - 1}\, \min_i S_{ii}

    with scale :math:`s = 2`. The kernel depends only on the physical distance, so it commutes
    with rotations and acts identically on every channel (scalars or irreps components).

    Parameters
    ----------
    steps : tuple of float, default=(1, 1, 1)
        Voxel sizes along the three axes (physical units).
    """

    def __init__(
        self, steps: tuple[float, float, float] = (1.0, 1.0, 1.0), stride: int = 2
    ) -> None:
        super().__init__()
        scale = float(stride)
        sigma = 0.5 * math.sqrt(scale**2 - 1) * min(steps)
        half = [max(1, math.floor(2.5 * sigma / s)) for s in steps]
        axes = [
            torch.arange(-h, h + 1, dtype=torch.float32) * s
            for h, s in zip(half, steps, strict=True)
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        kernel = torch.exp(-grid.pow(2).sum(-1) / (2 * sigma**2))
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None])
        self.padding = tuple(half)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur and subsample ``x`` of shape ``(B, C, X, Y, Z)`` (each channel alike)."""
        b, c = x.shape[:2]
        y = F.conv3d(
            x.reshape(b * c, 1, *x.shape[2:]),
            self.kernel.to(x.dtype),
            stride=self.stride,
            padding=self.padding,
        )
        return y.reshape(b, c, *y.shape[2:])


class CachedKernel:
    """Mixin: reuse the kernel built by ``kernel()`` while no parameter changed, in inference.

    The cache is used only when gradients are off and the module is in eval mode; it is keyed on
    the parameters' in-place version counters (optimiser steps and ``load_state_dict`` bump them).
    """

    def cached_kernel(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.kernel()
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cache = getattr(self, "_kernel_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, self.kernel())
            self._kernel_cache = cache
        return cache[1]


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
