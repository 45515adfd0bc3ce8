r"""Group actions on volumes beyond rotations: translations, rigid motions, header-only actions,
intensity gauges, circular time shifts and permutations of set elements.

Every action is a callable; the exact ones form groups under ``@`` with

.. math::  (g\,h) \cdot x = g \cdot (h \cdot x),

and have ``inverse()``. *Exact* means no interpolation: integer voxel shifts (circular),
signed axis permutations and header-only poses of images, gains, power-law contrast changes,
bias fields (coefficients add), circular time shifts and permutations. Resampled actions
(:class:`Translation`, :class:`RigidMotion`) act through trilinear interpolation and compose only
up to the resampling error. :class:`RicianNoise` is a random map, not a group element.

Volume actions take batches ``(B, C, X, Y, Z)`` (torch); intensity gauges act elementwise on
numpy arrays or tensors; header actions take nibabel images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = [
    "AxisPermutation",
    "BiasField",
    "Gain",
    "HeaderPose",
    "MonotoneContrast",
    "RicianNoise",
    "RigidMotion",
    "SetPermutation",
    "TimeShift",
    "Translation",
    "VoxelShift",
    "reorient_image",
    "rigid_matrix",
]

Array = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------- spatial (resampled)


def _affine_grid(
    R: torch.Tensor, t: torch.Tensor, shape: Sequence[int], spacing: Sequence[float]
) -> torch.Tensor:
    r"""``grid_sample`` grid reading :math:`x(R^\top(p - t))` at every physical point :math:`p`."""
    dtype, device = R.dtype, R.device
    n = torch.as_tensor(list(shape), dtype=dtype, device=device)
    s = torch.as_tensor(list(spacing), dtype=dtype, device=device)
    axes = [torch.arange(k, dtype=dtype, device=device) - (k - 1) / 2 for k in shape]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) * s
    src = torch.einsum("ji,xyzj->xyzi", R, p - t) / s
    return (src / ((n - 1).clamp(min=1) / 2)).flip(-1)[None]


def rigid_matrix(R: np.ndarray, t: Sequence[float]) -> np.ndarray:
    """The 4×4 homogeneous matrix of :math:`p \\mapsto R p + t`."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=float)
    T[:3, 3] = np.asarray(t, dtype=float)
    return T


@dataclass(frozen=True)
class RigidMotion:
    r"""Rotation about the grid centre then translation, by trilinear resampling.

    .. math::  (g \cdot x)(p) = x\big(R^\top (p - t)\big), \qquad g = (R, t) \in SE(3),

    with :math:`p` physical (mm, along the array axes, origin at the grid centre). Outside the
    grid reads as zero. ``g @ h`` is the motion :math:`(R_g R_h,\ R_g t_h + t_g)`.

    Parameters
    ----------
    matrix : array of shape (3, 3)
        Rotation :math:`R`.
    shift : sequence of float, default=(0, 0, 0)
        Translation :math:`t` in mm.
    spacing : tuple of float, default=(1, 1, 1)
        Voxel sizes (mm) along the array axes.
    """

    matrix: np.ndarray
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mode: str = "bilinear"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        R = torch.as_tensor(np.asarray(self.matrix), dtype=dtype, device=x.device)
        t = torch.as_tensor(list(self.shift), dtype=dtype, device=x.device)
        grid = _affine_grid(R, t, x.shape[-3:], self.spacing).expand(x.shape[0], -1, -1, -1, -1)
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=True)

    def __matmul__(self, other: RigidMotion) -> RigidMotion:
        T = rigid_matrix(self.matrix, self.shift) @ rigid_matrix(other.matrix, other.shift)
        return RigidMotion(T[:3, :3], tuple(T[:3, 3]), self.spacing, self.mode)

    def inverse(self) -> RigidMotion:
        Rt = np.asarray(self.matrix).T
        return RigidMotion(Rt, tuple(-Rt @ np.asarray(self.shift)), self.spacing, self.mode)


def Translation(  # noqa: N802  (a constructor of RigidMotion)
    shift: Sequence[float],
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    mode: str = "bilinear",
) -> RigidMotion:
    r"""Translation by ``shift`` mm, :math:`(g \cdot x)(p) = x(p - t)`, by resampling."""
    return RigidMotion(np.eye(3), tuple(float(s) for s in shift), spacing, mode)


@dataclass(frozen=True)
class VoxelShift:
    r"""Circular shift by whole voxels, an exact action of :math:`\mathbb{Z}^3` (torus):
    :math:`(g \cdot x)(v) = x(v - k \bmod n)`."""

    shift: tuple[int, int, int]

    def __call__(self, x: Array) -> Array:
        dims = (-3, -2, -1)
        if isinstance(x, torch.Tensor):
            return torch.roll(x, shifts=tuple(self.shift), dims=dims)
        return np.roll(x, shift=tuple(self.shift), axis=dims)

    def __matmul__(self, other: VoxelShift) -> VoxelShift:
        return VoxelShift(tuple(a + b for a, b in zip(self.shift, other.shift, strict=True)))

    def inverse(self) -> VoxelShift:
        return VoxelShift(tuple(-a for a in self.shift))


# --------------------------------------------------------------------------- header-only actions


@dataclass(frozen=True)
class AxisPermutation:
    r"""Reorder and reverse an image's array axes and rewrite its affine so that the image in world
    space is unchanged (a header-only change of the orientation code, exact).

    Output axis ``i`` is input axis ``perm[i]``, reversed when ``flips[i]``. The 48 signed
    permutations form a group: ``(g @ h)(img)`` equals ``g(h(img))``.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def matrix(self) -> np.ndarray:
        """Signed permutation ``M`` with ``M[i, perm[i]] = ±1`` (acting on centred indices)."""
        M = np.zeros((3, 3))
        for i, (p, f) in enumerate(zip(self.perm, self.flips, strict=True)):
            M[i, p] = -1.0 if f else 1.0
        return M

    @classmethod
    def from_matrix(cls, M: np.ndarray) -> AxisPermutation:
        M = np.rint(np.asarray(M)).astype(int)
        perm = tuple(int(np.flatnonzero(row)[0]) for row in M)
        flips = tuple(bool(M[i, p] < 0) for i, p in enumerate(perm))
        return cls(perm, flips)  # type: ignore[arg-type]

    def __matmul__(self, other: AxisPermutation) -> AxisPermutation:
        return AxisPermutation.from_matrix(self.matrix @ other.matrix)

    def inverse(self) -> AxisPermutation:
        return AxisPermutation.from_matrix(self.matrix.T)

    def __call__(self, img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
        data = np.asanyarray(img.dataobj)
        order = list(self.perm) + list(range(3, data.ndim))
        out = np.transpose(data, order)
        flips = [i for i, f in enumerate(self.flips) if f]
        if flips:
            out = np.flip(out, axis=flips)
        # output index u -> input index v: v[perm[i]] = u[i] (or n-1-u[i] when flipped)
        V = np.zeros((4, 4))
        V[3, 3] = 1.0
        for i, (p, f) in enumerate(zip(self.perm, self.flips, strict=True)):
            if f:
                V[p, i] = -1.0
                V[p, 3] = data.shape[p] - 1
            else:
                V[p, i] = 1.0
        res = nib.Nifti1Image(np.ascontiguousarray(out), img.affine @ V, img.header.copy())
        res.set_qform(img.affine @ V, code=int(img.header["qform_code"]) or 1)
        res.set_sform(img.affine @ V, code=int(img.header["sform_code"]) or 1)
        return res


def reorient_image(img: nib.spatialimages.SpatialImage, codes: str) -> nib.Nifti1Image:
    """Rewrite ``img`` with axis orientation ``codes`` (e.g. ``"LPS"``, ``"AIR"``), world content
    unchanged (exact: axes are only permuted and reversed)."""
    codes = codes.upper()
    if sorted(codes.replace("L", "R").replace("P", "A").replace("I", "S")) != ["A", "R", "S"]:
        raise ValueError(f"orientation codes must name each of R/L, A/P, S/I once; got {codes!r}")
    src = nib.orientations.io_orientation(img.affine)
    dst = nib.orientations.axcodes2ornt(tuple(codes))
    T = nib.orientations.ornt_transform(src, dst)  # input axis i -> output axis T[i, 0]
    perm = [0, 0, 0]
    flips = [False, False, False]
    for i, (j, s) in enumerate(T):
        perm[int(j)] = i
        flips[int(j)] = bool(s < 0)
    return AxisPermutation(tuple(perm), tuple(flips))(img)  # type: ignore[arg-type]


@dataclass(frozen=True)
class HeaderPose:
    r"""A rigid head pose written into the header only: the affine :math:`A` becomes
    :math:`T A` with :math:`T(p) = R p + t` (world mm), voxels untouched (exact, no resampling).

    To the pipeline this is the subject lying in the scanner moved by :math:`T`.
    ``(g @ h)(img) == g(h(img))``.
    """

    matrix: np.ndarray
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def homogeneous(self) -> np.ndarray:
        return rigid_matrix(self.matrix, self.shift)

    def __call__(self, img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
        A = self.homogeneous @ img.affine
        res = nib.Nifti1Image(np.asanyarray(img.dataobj), A, img.header.copy())
        res.set_qform(A, code=int(img.header["qform_code"]) or 1)
        res.set_sform(A, code=int(img.header["sform_code"]) or 1)
        return res

    def __matmul__(self, other: HeaderPose) -> HeaderPose:
        T = self.homogeneous @ other.homogeneous
        return HeaderPose(T[:3, :3], tuple(T[:3, 3]))

    def inverse(self) -> HeaderPose:
        T = np.linalg.inv(self.homogeneous)
        return HeaderPose(T[:3, :3], tuple(T[:3, 3]))


# --------------------------------------------------------------------------- intensity gauges


def _lib(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


@dataclass(frozen=True)
class Gain:
    r"""Multiplicative gain :math:`x \mapsto a x` (:math:`a > 0`; the group
    :math:`\mathbb{R}_{>0}`)."""

    gain: float

    def __call__(self, x: Array) -> Array:
        return x * self.gain

    def __matmul__(self, other: Gain) -> Gain:
        return Gain(self.gain * other.gain)

    def inverse(self) -> Gain:
        return Gain(1.0 / self.gain)


@dataclass(frozen=True)
class MonotoneContrast:
    r"""Power-law contrast change :math:`x \mapsto m\,(x_+/m)^{\gamma}`, strictly monotone on
    :math:`x \ge 0`; with a common reference :math:`m` the exponents multiply,
    :math:`(g\,h) = \gamma_g \gamma_h`."""

    gamma: float
    reference: float = 1.0

    def __call__(self, x: Array) -> Array:
        lib = _lib(x)
        return self.reference * (lib.clip(x, 0.0, None) / self.reference) ** self.gamma

    def __matmul__(self, other: MonotoneContrast) -> MonotoneContrast:
        if self.reference != other.reference:
            raise ValueError("MonotoneContrast compose only with a common reference")
        return MonotoneContrast(self.gamma * other.gamma, self.reference)

    def inverse(self) -> MonotoneContrast:
        return MonotoneContrast(1.0 / self.gamma, self.reference)


@dataclass(frozen=True)
class BiasField:
    r"""Smooth multiplicative bias :math:`x \mapsto x \exp\big(\sum_k c_k q_k(p / 100\,\text{mm})\big)`
    with the nine linear and quadratic monomials :math:`q_k` of the physical position :math:`p`
    (origin at the grid centre); coefficients add under composition.

    Acts on the last three axes of arrays/tensors with voxel sizes ``spacing``.
    """

    coefficients: tuple[float, ...]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def field(self, shape: Sequence[int]) -> np.ndarray:
        """The multiplicative field on a grid of ``shape`` (origin at the grid centre)."""
        axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, self.spacing, strict=True)]
        return self.field_at(np.stack(np.meshgrid(*axes, indexing="ij")))

    def field_at(self, positions_mm: np.ndarray) -> np.ndarray:
        """The multiplicative field at physical positions ``(3, ...)`` in mm (e.g. scanner
        coordinates, so that the field is fixed to the scanner, as a coil's is)."""
        x, y, z = (np.asarray(positions_mm[k], dtype=float) / 100.0 for k in range(3))
        basis = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
        return np.exp(sum(c * b for c, b in zip(self.coefficients, basis, strict=True)))

    def __call__(self, x: Array) -> Array:
        b = self.field(x.shape[-3:])
        if isinstance(x, torch.Tensor):
            return x * torch.as_tensor(b, dtype=x.dtype, device=x.device)
        return x * b.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else float)

    def __matmul__(self, other: BiasField) -> BiasField:
        c = tuple(a + b for a, b in zip(self.coefficients, other.coefficients, strict=True))
        return BiasField(c, self.spacing)

    def inverse(self) -> BiasField:
        return BiasField(tuple(-c for c in self.coefficients), self.spacing)


@dataclass(frozen=True)
class RicianNoise:
    r"""Rician (magnitude) noise: :math:`x \mapsto |x + \sigma \varepsilon_1 + i\sigma
    \varepsilon_2|` with standard normal :math:`\varepsilon`; a random map (no inverse)."""

    sigma: float
    seed: int | None = None

    def __call__(self, x: Array) -> Array:
        rng = np.random.default_rng(self.seed)
        n1 = rng.standard_normal(tuple(x.shape)) * self.sigma
        n2 = rng.standard_normal(tuple(x.shape)) * self.sigma
        if isinstance(x, torch.Tensor):
            n1 = torch.as_tensor(n1, dtype=x.dtype, device=x.device)
            n2 = torch.as_tensor(n2, dtype=x.dtype, device=x.device)
            return torch.sqrt((x + n1) ** 2 + n2**2)
        return np.sqrt((x + n1) ** 2 + n2**2)


# --------------------------------------------------------------------------- time and sets


@dataclass(frozen=True)
class TimeShift:
    r"""Circular shift of volumes in time, :math:`(g \cdot x)_t = x_{(t - k) \bmod T}`, on axis
    ``axis`` (default the last: nibabel BOLD ``(X, Y, Z, T)``); the group
    :math:`\mathbb{Z}_T`."""

    shift: int
    axis: int = -1

    def __call__(self, x: Array) -> Array:
        if isinstance(x, torch.Tensor):
            return torch.roll(x, shifts=self.shift, dims=self.axis)
        return np.roll(x, self.shift, axis=self.axis)

    def __matmul__(self, other: TimeShift) -> TimeShift:
        return TimeShift(self.shift + other.shift, self.axis)

    def inverse(self) -> TimeShift:
        return TimeShift(-self.shift, self.axis)


@dataclass(frozen=True)
class SetPermutation:
    r"""Permutation of the elements of a set along ``axis``: :math:`(g \cdot x)_i =
    x_{\pi^{-1}(i)}`, so ``(g @ h)`` acts as ``h`` then ``g``.

    ``perm[j]`` is where element ``j`` goes.
    """

    perm: tuple[int, ...]
    axis: int = 0
    _inv: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.perm)
        if sorted(p.tolist()) != list(range(len(p))):
            raise ValueError(f"not a permutation: {list(self.perm)}")
        object.__setattr__(self, "_inv", tuple(int(i) for i in np.argsort(p)))

    def __call__(self, x: Array) -> Array:
        idx = list(self._inv)
        if isinstance(x, torch.Tensor):
            return torch.index_select(x, self.axis, torch.as_tensor(idx, device=x.device))
        return np.take(x, idx, axis=self.axis)

    def __matmul__(self, other: SetPermutation) -> SetPermutation:
        # element j goes to other.perm[j], then to self.perm[other.perm[j]]
        return SetPermutation(tuple(self.perm[k] for k in other.perm), self.axis)

    def inverse(self) -> SetPermutation:
        return SetPermutation(self._inv, self.axis)
