r"""SO(3) invariance harness: band-limited volumes, accurate rotations, the floor and the unit.

A model's invariance to arbitrary rotations can only be measured as well as the rotation of its
input is known. The harness therefore

1. draws *smooth, band-limited* volumes (:func:`smooth_volumes`): white noise filtered by a
   Gaussian of width :math:`\sigma` voxels (spectrum :math:`e^{-2\pi^2\sigma^2 k^2}`, about
   :math:`10^{-9}` at Nyquist for :math:`\sigma = 2`), then a radial window so that the content
   sits inside the inscribed ball and no rotation moves it off the grid;
2. rotates them about the grid centre by quintic B-spline interpolation
   (:func:`spline_rotate`, :func:`scipy.ndimage.affine_transform` with its exact prefilter),
   whose error on such inputs is many orders below trilinear interpolation;
3. reports the model's movement in the unit of the *spread*: the root-mean-square distance
   between the outputs of different inputs,

   .. math::

       s = \Big(\frac{1}{B(B-1)} \sum_{i \ne j} \lVert f(x_i) - f(x_j)\rVert^2\Big)^{1/2},
       \qquad
       \varepsilon = \frac{1}{s}\Big(\frac{1}{nB}\sum_{R, i}
       \lVert f(R x_i) - f(x_i)\rVert^2\Big)^{1/2},

   next to the *floor* :math:`\varepsilon_0`, the same quantity for the round trip
   :math:`R^{-1}(R x_i)` (no net rotation: the interpolation error alone).

An error of 0.05 means a random rotation moves the outputs by 5% of the distance between two
different inputs; a value near the floor means the measurement cannot see any symmetry breaking.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["So3Invariance", "smooth_volumes", "so3_invariance", "spline_rotate"]

logger = logging.getLogger(__name__)


def smooth_volumes(
    n: int,
    shape: Sequence[int],
    sigma: float = 2.0,
    radius: float = 0.8,
    channels: int = 1,
    seed: int | np.random.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""Random smooth volumes ``(n, channels, *shape)``, zero outside a centred ball.

    Parameters
    ----------
    n : int
        Number of volumes.
    shape : sequence of int
        Spatial shape (cubic or not).
    sigma : float, default=2.0
        Width in voxels of the Gaussian filter applied to white noise (the band limit).
    radius : float, default=0.8
        Radius of the support, as a fraction of the half-extent of the shortest side; the
        window is :math:`\cos^2` over its outer 40% (smooth, radial).
    channels : int, default=1
        Channels per volume.
    seed : int or numpy.random.Generator, optional
        Seed of the noise.
    dtype : torch.dtype, default=torch.float64
        Output dtype.

    Returns
    -------
    torch.Tensor
        Each volume has unit root-mean-square inside its support.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 sides, got {shape}")
    r1 = radius * (min(shape) - 1) / 2
    axes = [np.arange(k) - (k - 1) / 2 for k in shape]
    r = np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij")))
    u = np.clip((r - 0.6 * r1) / (0.4 * r1), 0.0, 1.0)
    window = np.where(u < 1.0, np.cos(0.5 * np.pi * u) ** 2, 0.0)
    out = np.empty((n, channels, *shape))
    for i in range(n):
        for c in range(channels):
            v = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") * window
            out[i, c] = v / np.sqrt((v**2).sum() / (window**2).sum())
    return torch.as_tensor(out, dtype=dtype)


def spline_rotate(
    x: torch.Tensor,
    R: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    order: int = 5,
) -> torch.Tensor:
    r"""Rotate ``x`` ``(B, C, X, Y, Z)`` about the grid centre by ``R`` with B-spline interpolation.

    Same convention as :func:`pipeline.symmetry.rotate_volume`:
    :math:`(R\cdot x)(v) = x\big(S^{-1}R^\top S(v - c) + c\big)`, zero outside the grid, computed
    in float64 on the CPU by :func:`scipy.ndimage.affine_transform` (spline ``order``, exact
    prefilter). Not differentiable: for gradients use :func:`pipeline.symmetry.rotate_volume`.
    """
    from scipy import ndimage

    if x.ndim != 5:
        raise ValueError(f"spline_rotate expects (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    S = np.diag(np.asarray(spacing, dtype=float))
    M = np.linalg.inv(S) @ np.asarray(R, dtype=float).T @ S  # output index -> input index
    c = (np.asarray(x.shape[-3:], dtype=float) - 1) / 2
    offset = c - M @ c
    data = x.detach().cpu().double().numpy()
    out = np.empty_like(data)
    for b in range(data.shape[0]):
        for ch in range(data.shape[1]):
            out[b, ch] = ndimage.affine_transform(
                data[b, ch], M, offset=offset, order=order, mode="constant", cval=0.0
            )
    return torch.as_tensor(out, dtype=x.dtype, device=x.device)


@dataclass(frozen=True)
class So3Invariance:
    """Result of :func:`so3_invariance` (errors in units of the spread).

    Attributes
    ----------
    error : float
        RMS output movement under the rotations, divided by the spread.
    floor : float
        The same for the interpolation round trip (rotate and rotate back).
    spread : float
        RMS distance between the outputs of different inputs (output units).
    per_rotation : tuple of float
        ``error`` per rotation.
    """

    error: float
    floor: float
    spread: float
    per_rotation: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """``error / floor`` (how far above what the measurement can resolve)."""
        return self.error / self.floor if self.floor > 0 else math.inf

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


@torch.no_grad()
def so3_invariance(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    rotations: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    order: int = 5,
    batch_size: int = 4,
) -> So3Invariance:
    """Invariance of ``f`` to the ``rotations`` ``(n, 3, 3)`` at inputs ``x`` (see module doc).

    Parameters
    ----------
    f : callable
        Maps ``(B, C, X, Y, Z)`` to ``(B, ...)`` sample by sample (a model in ``eval()`` mode).
    x : torch.Tensor
        At least two inputs (the spread needs pairs), ideally from :func:`smooth_volumes`.
    rotations : numpy.ndarray
        Rotation matrices, e.g. :func:`pipeline.symmetry.random_rotations`.
    spacing : sequence of float, default=(1, 1, 1)
        Voxel sizes, so that rotations are physical.
    order : int, default=5
        B-spline order of :func:`spline_rotate`.
    batch_size : int, default=4
        Inputs per call of ``f``.
    """
    if x.shape[0] < 2:
        raise ValueError(f"so3_invariance needs at least 2 inputs for the spread, got {x.shape[0]}")
    rotations = np.asarray(rotations, dtype=float).reshape(-1, 3, 3)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([f(v[i : i + batch_size]) for i in range(0, len(v), batch_size)])

    fx = apply(x).flatten(1).double()
    diff = fx[:, None] - fx[None]
    b = fx.shape[0]
    spread = float((diff.pow(2).sum(-1).sum() / (b * (b - 1))).sqrt())
    if spread == 0:
        raise ValueError("the outputs do not differ between inputs: the spread is zero")
    moved, trip = [], []
    for R in rotations:
        xr = spline_rotate(x, R, spacing, order)
        moved.append((apply(xr).flatten(1).double() - fx).pow(2).sum(-1))
        back = spline_rotate(xr, R.T, spacing, order)
        trip.append((apply(back).flatten(1).double() - fx).pow(2).sum(-1))
    per = tuple(float(m.mean().sqrt()) / spread for m in moved)
    result = So3Invariance(
        error=float(torch.stack(moved).mean().sqrt()) / spread,
        floor=float(torch.stack(trip).mean().sqrt()) / spread,
        spread=spread,
        per_rotation=per,
    )
    logger.debug("SO(3) invariance: %s", result)
    return result
