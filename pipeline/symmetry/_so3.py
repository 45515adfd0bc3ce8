r"""Rotations of :math:`SO(3)`: uniform (Haar) sampling, axis–angle, and helpers.

A unit quaternion drawn from an isotropic Gaussian in :math:`\mathbb{R}^4` is uniform on
:math:`S^3`, and its rotation matrix is Haar-distributed on :math:`SO(3)` (Shoemake 1992).
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_rotations", "axis_angle_matrix", "rotation_angle", "quaternion_matrix"]


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices of (normalised) quaternions ``q = (w, x, y, z)`` of shape ``(..., 4)``."""
    q = np.asarray(q, dtype=float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def random_rotations(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """``n`` rotation matrices drawn uniformly (Haar measure) from :math:`SO(3)`, shape ``(n, 3,
    3)``."""
    rng = np.random.default_rng(seed)
    return quaternion_matrix(rng.standard_normal((n, 4)))


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    r"""Rodrigues' formula :math:`R = I + \sin\theta K + (1 - \cos\theta) K^2` for a unit
    ``axis``."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def rotation_angle(R: np.ndarray) -> np.ndarray:
    r"""Angle :math:`\theta = \arccos((\operatorname{tr} R - 1)/2)` in radians, for ``(..., 3,
    3)``."""
    tr = np.trace(np.asarray(R), axis1=-2, axis2=-1)
    return np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0))
