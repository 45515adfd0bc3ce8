"""Plain 3D CNN baseline: the same skeleton as the equivariant models, without weight sharing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models._layers import BlurPool3d, invariant_head

__all__ = ["CNN3d"]


class CNN3d(nn.Module):
    """Conv(3³) → BatchNorm → ReLU per level, anti-aliased stride-2 pooling between levels,
    global mean and max pooling (a local effect is not diluted by the mean) and a two-layer head.

    Parameters
    ----------
    in_channels : int
        Input channels.
    num_outputs : int
        Logits (or regression outputs).
    widths : sequence of int, default=(8, 16, 32)
        Channels per level; ``len(widths) - 1`` downsampling stages.
    steps : tuple of float, default=(1, 1, 1)
        Voxel sizes (used by the anti-aliasing filter).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        widths: Sequence[int] = (8, 16, 32),
        steps: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for level, w in enumerate(widths):
            if level:
                blocks.append(BlurPool3d(tuple(s * 2 ** (level - 1) for s in steps)))
            blocks += [nn.Conv3d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm3d(w), nn.ReLU()]
            c_in = w
        self.features = nn.Sequential(*blocks)
        self.head = invariant_head(2 * c_in, c_in, num_outputs)
        self.levels = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, X, Y, Z)`` to ``(B, num_outputs)``."""
        f = self.features(x).flatten(2)
        return self.head(torch.cat([f.mean(-1), f.amax(-1)], dim=1))
