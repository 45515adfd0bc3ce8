r"""Layers shared by every model: anti-aliased strided pooling, input-size rules, invariant heads.

Stride lattice and exact invariance
-----------------------------------
A stride-2 layer with a symmetric odd kernel and padding ``size // 2`` samples input indices
:math:`0, 2, 4, \dots`. That set is mapped onto itself by the reversal :math:`i \mapsto N-1-i`
(and hence by all 24 rotations of a cube) only when :math:`N` is odd; for even :math:`N` the
lattice of pairs :math:`(2j, 2j+1)` is the symmetric one. :class:`BlurPool3d` picks the lattice
from each axis's parity at run time, so every model built on it (``cnn``, ``octahedral``,
``relaxed``, ``steerable``) commutes with the cube rotations at *any* input size, cubic or not:
no padding is needed. :func:`centred_size` and :func:`pad_to_centred` remain for callers that want
the classic :math:`N \equiv 1 \pmod{2^L}` grids (e.g. 17, 33, 65, 97 for ``L`` ≤ 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = [
    "BlurPool3d",
    "PooledFeatureNorm",
    "centred_size",
    "invariant_head",
    "is_centred_size",
    "pad_to_centred",
]


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
    r"""Anti-aliased downsampling: isotropic Gaussian blur, then stride 2 (Zhang 2019), on a
    lattice that is symmetric about the grid centre at *any* input size.

    .. math::

        k(u) \propto \exp\!\big(-\lVert S u \rVert^2 / 2\sigma^2\big),
        \quad \sigma = \tfrac{1}{2}\sqrt{s^2 - 1}\, \min_i S_{ii} \cdot \text{sharpness}^{-1}

    with scale :math:`s = 2`. The kernel depends only on the physical distance, so it commutes
    with rotations and acts identically on every channel (scalars or irreps components).

    Along an axis of odd length :math:`N` the kernel has odd support and is centred on the even
    indices :math:`0, 2, \dots, N-1` (:math:`(N+1)/2` outputs); along an axis of even length it
    has even support, is sampled at half-integer offsets and centred between voxels
    :math:`2j, 2j+1` (:math:`N/2` outputs). Both output lattices are mapped onto themselves by the
    reversal :math:`i \mapsto N-1-i`, so the 24 cube rotations (and axis reversals) commute with
    the layer exactly, whatever the size. The banded matrices are built per input size and cached.

    Parameters
    ----------
    steps : tuple of float, default=(1, 1, 1)
        Voxel sizes along the three axes (physical units).
    stride : int, default=2
        Subsampling factor (only 2 keeps the parity rule above).
    sigma : float, optional
        Gaussian width in physical units (default: the formula above, about 0.87 voxel).
    """

    def __init__(
        self,
        steps: tuple[float, float, float] = (1.0, 1.0, 1.0),
        stride: int = 2,
        sigma: float | None = None,
    ) -> None:
        super().__init__()
        if stride != 2:
            raise ValueError(f"BlurPool3d supports stride 2 only, got {stride}")
        self.steps = tuple(float(s) for s in steps)
        self.sigma = float(sigma) if sigma is not None else 0.5 * math.sqrt(3.0) * min(steps)
        self.stride = stride
        self._kernels: dict[tuple, tuple[torch.Tensor, ...]] = {}
        # the odd-size kernel, kept as a buffer (checkpoints of earlier versions carry it)
        self.register_buffer("kernel", self._build((True, True, True))[0].float())

    def _taps(self, is_odd: bool, step: float) -> tuple[torch.Tensor, int]:
        """1-D Gaussian taps along one axis (odd or even support) and the padding."""
        reach = 2.5 * self.sigma / step  # support radius in voxels
        if is_odd:
            half = max(1, math.floor(reach))
            offsets = torch.arange(-half, half + 1, dtype=torch.float64)
            pad = half
        else:  # centred between two voxels: offsets ±0.5, ±1.5, ...
            half = max(1, math.floor(reach + 0.5))
            offsets = torch.arange(-half, half, dtype=torch.float64) + 0.5
            pad = half - 1
        taps = torch.exp(-((offsets * step) ** 2) / (2 * self.sigma**2))
        return taps / taps.sum(), pad

    def _build(self, odd: tuple[bool, bool, bool]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Dense kernel ``(1, 1, kx, ky, kz)`` and padding for inputs whose sides have parities
        ``odd``: the outer product of the 1-D taps (a sampled isotropic Gaussian factorises)."""
        taps, pads = zip(
            *(self._taps(o, s) for o, s in zip(odd, self.steps, strict=True)), strict=True
        )
        kernel = torch.einsum("i,j,k->ijk", *taps)
        return kernel[None, None], tuple(pads)

    def _band(self, n: int, step: float) -> torch.Tensor:
        """The strided 1-D blur along an axis of ``n`` voxels as a banded ``(n_out, n)`` matrix:
        row ``j`` holds the taps centred on output ``j`` (zero padding)."""
        taps, pad = self._taps(bool(n % 2), step)
        n_out = (n + 2 * pad - taps.numel()) // self.stride + 1
        rows = torch.arange(n_out)[:, None].expand(-1, taps.numel())
        cols = self.stride * rows + torch.arange(taps.numel()) - pad  # input voxel of each tap
        inside = (cols >= 0) & (cols < n)  # taps on the zero padding are dropped
        band = torch.zeros(n_out, n, dtype=torch.float64)
        band[rows[inside], cols[inside]] = taps.expand(n_out, -1)[inside]
        return band

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur and subsample ``x`` of shape ``(B, C, X, Y, Z)`` (each channel alike).

        Computed as three 1-D strided blurs (the Gaussian is separable), each a product with a
        banded matrix along its axis: the same map as the dense 3-D kernel of :meth:`_build`,
        at a fraction of the cost. (Strided single-channel ``conv3d`` calls were 4× slower on
        CPU, forward and backward, and dominated the steerable model's step.)
        """
        key = (tuple(x.shape[-3:]), x.device, x.dtype)
        if key not in self._kernels:
            self._kernels[key] = tuple(
                self._band(n, s).to(device=x.device, dtype=x.dtype)
                for n, s in zip(x.shape[-3:], self.steps, strict=True)
            )
        bx, by, bz = self._kernels[key]
        y = torch.einsum("bcxyz,ox->bcoyz", x, bx)
        y = torch.einsum("bcxyz,oy->bcxoz", y, by)
        return torch.einsum("bcxyz,oz->bcxyo", y, bz)


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


class PooledFeatureNorm(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` over pooled features that accepts a batch of one.

    Batch statistics of a single volume are undefined; such a batch (a training set whose size
    leaves one volume over, or a one-volume call in training mode) is standardised with the
    running statistics instead, and does not update them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def invariant_head(n_features: int, hidden: int, num_outputs: int) -> nn.Sequential:
    """The MLP every volume model puts on its pooled (invariant) features.

    The pooled features are standardised first (:class:`torch.nn.BatchNorm1d`, statistics over
    the subjects of a batch). Spatial means and maxima of ReLU maps are positive with a large
    common offset and a small between-subject spread (means ≈ 0.4, sd ≈ 0.05 at
    initialisation), so a head reading them raw can sit at chance for many epochs: the
    symmetry grid saw group-conv and augmented models stall at a loss of ln 2 in a quarter of
    its seeds, and standardising rescued all but one of the stalled cells tried. The
    normalisation acts on invariant features, so it keeps every model's invariance exact.

    Parameters
    ----------
    n_features : int
        Pooled features per volume (e.g. spatial mean and max of each channel).
    hidden : int
        Hidden ReLU units. Keep it well above a handful: a narrow head reading non-negative
        features can lose every unit and leave a constant predictor.
    num_outputs : int
        Logits.

    Returns
    -------
    torch.nn.Sequential
        ``BatchNorm1d → Linear → ReLU → Linear`` (parameters ``0.*``, ``1.*`` and ``3.*``).
        A batch of one volume in training mode is standardised with the running statistics.
    """
    return nn.Sequential(
        PooledFeatureNorm(n_features),
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_outputs),
    )


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
