r"""The 24 rotations of the cube (the chiral octahedral group :math:`O \subset SO(3)`) as exact
index maps.

Each element is a signed permutation matrix :math:`R` with :math:`\det R = +1`. It acts on a
volume :math:`x` sampled on a grid whose (centred) index vector is :math:`v` by

.. math::  (R \cdot x)(u) = x(R^{-1} u), \qquad u_i = s_i\, v_{p(i)},

i.e. output axis :math:`i` is input axis :math:`p(i)`, reversed when :math:`s_i = -1`. This is an
exact permutation of voxels (no interpolation) when the volume is a cube, and it composes as a
group action: ``apply(g, apply(h, x)) == apply(g @ h, x)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

__all__ = ["CubeRotation", "cube_rotations", "cube_multiplication_table", "rotate_cube"]


@dataclass(frozen=True)
class CubeRotation:
    """One rotation of the cube: output axis ``i`` is input axis ``perm[i]``, reversed if
    ``signs[i] < 0``.

    Parameters
    ----------
    perm : tuple of int
        A permutation of (0, 1, 2).
    signs : tuple of int
        Each +1 or -1; ``det(matrix) == +1``.
    """

    perm: tuple[int, int, int]
    signs: tuple[int, int, int]

    @cached_property
    def matrix(self) -> np.ndarray:
        """The 3×3 rotation matrix :math:`R` acting on centred index coordinates (``R[i, perm[i]] =
        signs[i]``)."""
        m = np.zeros((3, 3))
        for i, (p, s) in enumerate(zip(self.perm, self.signs, strict=True)):
            m[i, p] = s
        return m

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> CubeRotation:
        """The element whose matrix is ``matrix`` (a signed permutation with determinant +1)."""
        m = np.rint(np.asarray(matrix, dtype=float)).astype(int)
        if (
            m.shape != (3, 3)
            or not np.allclose(m, matrix, atol=1e-6)
            or round(np.linalg.det(m)) != 1
        ):
            raise ValueError(f"not a rotation of the cube: {np.asarray(matrix).tolist()}")
        perm = tuple(int(np.flatnonzero(row)[0]) for row in m)
        signs = tuple(int(m[i, p]) for i, p in enumerate(perm))
        return cls(perm, signs)  # type: ignore[arg-type]

    def __matmul__(self, other: CubeRotation) -> CubeRotation:
        """Group product: ``(g @ h)`` acts as ``h`` first, then ``g``."""
        return CubeRotation.from_matrix(self.matrix @ other.matrix)

    def inverse(self) -> CubeRotation:
        """The inverse element (the transposed matrix)."""
        return CubeRotation.from_matrix(self.matrix.T)

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Rotate the last three axes of ``x`` (see :func:`rotate_cube`)."""
        return rotate_cube(x, self)

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and self.signs == (1, 1, 1)


def _elements() -> tuple[CubeRotation, ...]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            g = CubeRotation(perm, signs)  # type: ignore[arg-type]
            if round(np.linalg.det(g.matrix)) == 1:
                out.append(g)
    # identity first, then a fixed order
    out.sort(key=lambda g: (not g.is_identity, g.perm, g.signs))
    return tuple(out)


_ELEMENTS = _elements()


def cube_rotations() -> tuple[CubeRotation, ...]:
    """The 24 rotations of the cube, identity first, in a fixed order."""
    return _ELEMENTS


def cube_multiplication_table() -> np.ndarray:
    """Table ``T[a, b] = index of (g_a @ g_b)`` over :func:`cube_rotations` (24×24 int)."""
    index = {g: i for i, g in enumerate(_ELEMENTS)}
    return np.array([[index[a @ b] for b in _ELEMENTS] for a in _ELEMENTS], dtype=np.int64)


def rotate_cube(x: torch.Tensor | np.ndarray, g: CubeRotation) -> torch.Tensor | np.ndarray:
    """Rotate the last three (spatial) axes of ``x`` by ``g``, exactly, by permuting and reversing
    axes.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        Array of shape ``(..., X, Y, Z)``. All 24 elements map the grid onto itself only when
        ``X == Y == Z``; otherwise the result has permuted spatial shape.
    g : CubeRotation
        The element.

    Returns
    -------
    Same type as ``x``, with ``out[..., u] = x[..., R^{-1} u]`` in centred index coordinates.
    """
    if x.ndim < 3:
        raise ValueError(f"rotate_cube needs at least 3 axes, got shape {tuple(x.shape)}")
    lead = x.ndim - 3
    order = list(range(lead)) + [lead + p for p in g.perm]
    flips = [lead + i for i, s in enumerate(g.signs) if s < 0]
    if isinstance(x, torch.Tensor):
        y = x.permute(*order)
        return torch.flip(y, flips) if flips else y
    y = np.transpose(x, order)
    return np.flip(y, axis=flips) if flips else y
