"""Group actions on volumes and measures of (in/equi)variance.

- :mod:`._cube`: the 24 rotations of the cube as exact index permutations (and their matrices).
- :mod:`._so3`: uniform sampling of :math:`SO(3)` and rotation helpers.
- :mod:`._resample`: rotations of volumes in physical space, with (differentiable) resampling.
- :mod:`._measures`: :func:`equivariance_error` and the resampling floor.

An *action* is any callable on a batch of volumes; resampled actions also have ``inverse()``.
"""

from pipeline.symmetry._cube import (
    CubeRotation,
    cube_multiplication_table,
    cube_rotations,
    rotate_cube,
)
from pipeline.symmetry._measures import equivariance_error, relative_error, resampling_floor
from pipeline.symmetry._resample import Rotation, rotate_image, rotate_volume
from pipeline.symmetry._so3 import (
    axis_angle_matrix,
    quaternion_matrix,
    random_rotations,
    rotation_angle,
)

__all__ = [
    "CubeRotation",
    "Rotation",
    "axis_angle_matrix",
    "cube_multiplication_table",
    "cube_rotations",
    "equivariance_error",
    "quaternion_matrix",
    "random_rotations",
    "relative_error",
    "resampling_floor",
    "rotate_cube",
    "rotate_image",
    "rotate_volume",
    "rotation_angle",
]
