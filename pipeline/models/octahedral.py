r"""Group CNN over the 24 rotations of the cube (Cohen & Welling 2016; Winkels & Cohen 2018), pure
torch.

Feature maps are functions :math:`f(c, g, u)` of a channel, a group element :math:`g \in O` and a
voxel. The lifting layer and the group convolutions share weights across :math:`O`:

.. math::
    [\,x \star \psi\,](o, g, u) &= \sum_{i, v} x(i, v)\, (g\psi)(o, i, v - u), \\
    [\,f \star \psi\,](o, g, u) &= \sum_{i, h, v} f(i, h, v)\, (g\psi)(o, i, g^{-1}h, v - u),

where :math:`g\psi` rotates the spatial kernel exactly (:mod:`pipeline.symmetry`). Rotating the
input by :math:`r` rotates every feature map spatially and shifts its group axis
(:math:`g \mapsto r^{-1}g`); averaging over the group axis (*group pooling*), then mean and max
over space,
makes the logits exactly invariant. All rotated kernels are stacked into one ``conv3d``.

The relaxed variant (Wang, Walters & Yu 2022) replaces :math:`\psi` by
:math:`\sum_l \alpha_l(g)\,\psi_l`: filter banks :math:`\psi_l` mixed with weights that may depend
on the output element :math:`g`. With :math:`\alpha_l(g)` constant in :math:`g` (the
initialisation) the layer is exactly equivariant; :meth:`RelaxedOctahedralCNN.symmetry_penalty`
measures how far the weights moved from that, :math:`\lambda \sum_{l,g} (\alpha_l(g) -
\bar\alpha_l)^2`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.models._layers import BlurPool3d, CachedKernel, invariant_head
from pipeline.symmetry import cube_multiplication_table, cube_rotations, rotate_cube

__all__ = ["OctahedralCNN", "RelaxedOctahedralCNN", "GroupConv3d"]

N_GROUP = 24


def _kernel_permutations(k: int) -> torch.Tensor:
    """``P[g, s]``: flat index of the source voxel of rotated kernel voxel ``s`` (24 × k³)."""
    idx = np.arange(k**3).reshape(k, k, k)
    return torch.as_tensor(
        np.stack([np.ascontiguousarray(rotate_cube(idx, g)).ravel() for g in cube_rotations()])
    )


def _group_index() -> torch.Tensor:
    """``Q[g, h] = index of g⁻¹h`` (24 × 24)."""
    table = cube_multiplication_table()
    inv = np.array([int(np.flatnonzero(row == 0)[0]) for row in table])
    return torch.as_tensor(table[inv])


class GroupConv3d(CachedKernel, nn.Module):
    """Lifting (``lifting=True``) or group convolution over the 24 cube rotations.

    Input ``(B, C_in, X, Y, Z)`` (lifting) or ``(B, C_in·24, X, Y, Z)``; output ``(B, C_out·24, X,
    Y, Z)``
    with the group axis fastest. ``banks > 1`` gives the relaxed (approximately equivariant) layer.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels (per group element).
    kernel_size : int, default=3
        Odd spatial kernel size.
    lifting : bool, default=False
        Input has no group axis.
    banks : int, default=1
        Number of filter banks :math:`L`; relaxed weights :math:`\\alpha \\in \\mathbb{R}^{L\\times
        24}`
        are created when ``banks > 1`` (initialised constant over the group: exact equivariance).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        lifting: bool = False,
        banks: int = 1,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels, self.k = in_channels, out_channels, kernel_size
        self.lifting, self.banks = lifting, banks
        g_in = 1 if lifting else N_GROUP
        fan_in = in_channels * g_in * kernel_size**3
        w = torch.randn(banks, out_channels, in_channels, g_in, kernel_size**3)
        self.weight = nn.Parameter(w * math.sqrt(2.0 / fan_in) / math.sqrt(banks))
        self.relaxed_weights = nn.Parameter(torch.ones(banks, N_GROUP)) if banks > 1 else None
        self.register_buffer("kperm", _kernel_permutations(kernel_size), persistent=False)
        self.register_buffer("gindex", _group_index(), persistent=False)

    def kernel(self) -> torch.Tensor:
        """The stacked kernel ``(C_out·24, C_in·g_in, k, k, k)``."""
        L, O, I, Gi, S = self.weight.shape
        kp = self.kperm  # (G, S)
        if self.lifting:
            # K[l, o, i, g, s] = W[l, o, i, 0, kperm[g, s]]
            K = self.weight[:, :, :, 0][..., kp]  # (L, O, I, G, S)
            K = K.permute(0, 1, 3, 2, 4)  # (L, O, G, I, S)
        else:
            # K[l, o, i, g, h, s] = W[l, o, i, Q[g, h], kperm[g, s]]
            K = self.weight[:, :, :, self.gindex[:, :, None], kp[:, None, :]]  # (L, O, I, G, H, S)
            K = K.permute(0, 1, 3, 2, 4, 5)  # (L, O, G, I, H, S)
        if self.relaxed_weights is None:
            K = K[0]
        else:
            shape = (L, 1, N_GROUP) + (1,) * (K.ndim - 3)
            K = (self.relaxed_weights.view(shape) * K).sum(0)
        k = self.k
        return K.reshape(O * N_GROUP, I * Gi, k, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv3d(x, self.cached_kernel().to(x.dtype), padding=self.k // 2)

    def symmetry_defect(self) -> torch.Tensor:
        r""":math:`\sum_{l,g} (\alpha_l(g) - \bar\alpha_l)^2` (zero for the exactly equivariant
        layer)."""
        if self.relaxed_weights is None:
            return self.weight.new_zeros(())
        a = self.relaxed_weights
        return (a - a.mean(dim=1, keepdim=True)).pow(2).sum()


class _GroupBatchNorm(nn.Module):
    """BatchNorm with statistics shared over the group axis (keeps equivariance)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, cg, X, Y, Z = x.shape
        y = self.bn(x.reshape(b, cg // N_GROUP, N_GROUP * X, Y, Z))
        return y.reshape(b, cg, X, Y, Z)


class OctahedralCNN(nn.Module):
    """Lifting + group convolutions over the 24 cube rotations, group pooling, invariant head.

    Parameters
    ----------
    in_channels, num_outputs : int
        Input channels and outputs.
    widths : sequence of int, default=(2, 4, 8)
        Channels per group element, per level (``len(widths) - 1`` stride-2 stages).
    steps : tuple of float, default=(1, 1, 1)
        Voxel sizes (anti-aliasing filter).
    banks : int, default=1
        Filter banks per layer; ``> 1`` makes the layers relaxed (see
        :class:`RelaxedOctahedralCNN`).
    head_width : int, default=32
        Hidden units of the invariant MLP head. It reads non-negative pooled features, so a head
        as narrow as the last level (4–8 units) can lose every unit to a negative ReLU input and
        leave a constant predictor: the symmetry grid saw that in a third of its seeds.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        widths: Sequence[int] = (2, 4, 8),
        steps: tuple[float, float, float] = (1.0, 1.0, 1.0),
        banks: int = 1,
        head_width: int = 32,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for level, w in enumerate(widths):
            if level:
                blocks.append(BlurPool3d(tuple(s * 2 ** (level - 1) for s in steps)))
            blocks += [
                GroupConv3d(c_in, w, 3, lifting=level == 0, banks=banks),
                _GroupBatchNorm(w),
                nn.ReLU(),
            ]
            c_in = w
        self.features = nn.Sequential(*blocks)
        self.head = invariant_head(2 * c_in, head_width, num_outputs)
        self.levels = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, X, Y, Z)`` to ``(B, num_outputs)``; exactly invariant to the 24 cube
        rotations."""
        f = self.features(x)
        b = f.shape[0]
        g = f.reshape(b, -1, N_GROUP, *f.shape[2:]).mean(dim=2).flatten(2)  # group pooling
        return self.head(torch.cat([g.mean(-1), g.amax(-1)], dim=1))  # spatial mean and max


class RelaxedOctahedralCNN(OctahedralCNN):
    r"""Relaxed group CNN (Wang, Walters & Yu 2022): starts exactly equivariant, may break symmetry.

    Parameters
    ----------
    banks : int, default=2
        Filter banks per layer.
    penalty : float, default=1e-2
        :math:`\lambda` in :meth:`symmetry_penalty`, added to the training loss.
    head_width : int, default=32
        Hidden units of the invariant head (see :class:`OctahedralCNN`).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        widths: Sequence[int] = (2, 3, 6),
        steps: tuple[float, float, float] = (1.0, 1.0, 1.0),
        banks: int = 2,
        penalty: float = 1e-2,
        head_width: int = 32,
    ) -> None:
        if banks < 2:
            raise ValueError(f"relaxed model needs banks >= 2, got {banks}")
        super().__init__(in_channels, num_outputs, widths, steps, banks, head_width)
        self.penalty = penalty

    def symmetry_defect(self) -> torch.Tensor:
        """Sum of every layer's :meth:`GroupConv3d.symmetry_defect` (0 when exactly equivariant)."""
        return sum(m.symmetry_defect() for m in self.modules() if isinstance(m, GroupConv3d))

    def symmetry_penalty(self) -> torch.Tensor:
        r"""The loss term :math:`\lambda \cdot` :meth:`symmetry_defect`."""
        return self.penalty * self.symmetry_defect()

    @torch.no_grad()
    def measured_epsilon(self, x: torch.Tensor, batch_size: int = 4) -> dict[str, Any]:
        r"""The model's own :math:`\varepsilon` of approximate invariance, measured on ``x``.

        The relative change of the logits under the 23 non-trivial cube rotations (the group the
        model relaxes), :func:`pipeline.symmetry.cube_epsilon`, in eval mode (the training flag is
        restored). :math:`\varepsilon \approx 10^{-7}` (float32 rounding) while the relaxed weights
        are constant over the group; it grows as training breaks the symmetry, which
        :meth:`symmetry_defect` only bounds indirectly (a weight-space distance).

        Parameters
        ----------
        x : torch.Tensor
            Inputs ``(B, C, X, Y, Z)``, moved to the model's device.
        batch_size : int, default=4
            Inputs per forward pass.

        Returns
        -------
        dict
            ``epsilon`` (max relative change), ``epsilon_mean``, ``epsilon_spread`` (RMS change in
            units of the logits' input-to-input spread), ``n_inputs``, ``n_actions``, ``group``
            and ``symmetry_defect``.
        """
        from pipeline.symmetry import cube_epsilon

        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            out = cube_epsilon(self, x.to(device=p.device, dtype=p.dtype), batch_size)
        finally:
            self.train(was_training)
        return {**out, "symmetry_defect": float(self.symmetry_defect())}
