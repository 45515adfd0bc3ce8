"""Group actions on volumes and measures of (in/equi)variance.

- :mod:`._cube`: the 24 rotations of the cube as exact index permutations (and their matrices).
- :mod:`._so3`: uniform sampling of :math:`SO(3)` and rotation helpers.
- :mod:`._resample`: rotations of volumes in physical space, with (differentiable) resampling.
- :mod:`._measures`: :func:`equivariance_error`, the resampling floor and the measured
  :math:`\varepsilon` of approximate invariance (:func:`group_epsilon`, :func:`cube_epsilon`).
- :mod:`._actions`: translations and rigid motions, header-only actions on images (axis
  permutations, orientation codes, header poses), intensity gauges (gain, monotone contrast, bias
  field, Rician noise), circular time shifts, permutations of set elements.
- :mod:`._harness`: the SO(3) invariance harness: band-limited volumes, quintic-spline
  rotations, the round-trip floor and the input-to-input spread as the unit
  (:func:`so3_invariance`).
- :mod:`._lie`: Lie derivatives along the rotation generators by forward mode
  (:func:`torch.func.jvp`) through a cubic resampler written in torch ops.

An *action* is any callable on a batch of volumes; resampled actions also have ``inverse()``.
"""

from pipeline.symmetry._actions import (
    AxisPermutation,
    BiasField,
    Gain,
    HeaderPose,
    MonotoneContrast,
    RicianNoise,
    RigidMotion,
    SetPermutation,
    TimeShift,
    Translation,
    VoxelShift,
    reorient_image,
    rigid_matrix,
)
from pipeline.symmetry._cube import (
    CubeRotation,
    cube_multiplication_table,
    cube_rotations,
    rotate_cube,
)
from pipeline.symmetry._harness import (
    So3Invariance,
    smooth_volumes,
    so3_invariance,
    spline_rotate,
)
from pipeline.symmetry._lie import (
    lie_derivative,
    lie_derivative_norm,
    rotate_by_angles,
    rotation_generators,
)
from pipeline.symmetry._measures import (
    cube_epsilon,
    equivariance_error,
    group_epsilon,
    relative_error,
    resampling_floor,
)
from pipeline.symmetry._resample import Rotation, cubic_resample, rotate_image, rotate_volume
from pipeline.symmetry._so3 import (
    axis_angle_matrix,
    quaternion_matrix,
    random_rotations,
    rotation_angle,
)

__all__ = [
    "AxisPermutation",
    "BiasField",
    "CubeRotation",
    "Gain",
    "HeaderPose",
    "MonotoneContrast",
    "RicianNoise",
    "RigidMotion",
    "Rotation",
    "SetPermutation",
    "So3Invariance",
    "TimeShift",
    "Translation",
    "VoxelShift",
    "axis_angle_matrix",
    "cube_epsilon",
    "cube_multiplication_table",
    "cubic_resample",
    "cube_rotations",
    "equivariance_error",
    "group_epsilon",
    "lie_derivative",
    "lie_derivative_norm",
    "quaternion_matrix",
    "random_rotations",
    "relative_error",
    "reorient_image",
    "rigid_matrix",
    "resampling_floor",
    "rotate_by_angles",
    "rotate_cube",
    "rotate_image",
    "rotate_volume",
    "rotation_angle",
    "rotation_generators",
    "smooth_volumes",
    "so3_invariance",
    "spline_rotate",
]
