r"""BOLD→T1w coregistration scored against a known true mapping (the demo's ground truth).

A mask overlap cannot tell a good coregistration from one a few millimetres off (a BOLD brain
and a T1w brain overlap at Dice ≈ 0.6–0.8 either way), so symprep scores coregistration by the
**mean displacement error over the brain**: for T1w brain points :math:`q`,

.. math::

    e = \langle \lVert C_{est}\,q - C_{true}(q) \rVert \rangle_{q \in \text{brain}},

with :math:`C` the T1w → BOLD-reference point map (the convention of ``desc-coreg_xfm``).
:math:`C_{true}` is rigid (the head's motion between the T1w and the reference volume) unless the
EPI is distorted; then a spin at :math:`C q` appears shifted along the phase-encoding axis, and
the part of the error a rigid coregistration cannot remove is reported beside it.

A coregistration fails QC when :math:`e` exceeds :data:`COREG_ERROR_THRESHOLD_MM`: 5 mm or 5° off
fails it (tested), a BOLD voxel's worth of error (3–4 mm at the edge, ~2 mm on average) does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np

#: mean displacement error (mm) above which a coregistration fails
COREG_ERROR_THRESHOLD_MM = 2.5


@dataclass(frozen=True)
class CoregAccuracy:
    """Displacement error of an estimated coregistration against the truth (mm).

    Attributes
    ----------
    mean_mm, max_mm : float
        Mean and largest error of the rigid map over the brain against the true rigid map.
    distortion_mean_mm : float
        Mean size of the true EPI shift over the brain: the error a rigid map cannot remove
        (0 without distortion).
    total_mean_mm : float
        Mean error against the true mapping including the distortion.
    passed : bool
        ``mean_mm <= COREG_ERROR_THRESHOLD_MM``.
    """

    mean_mm: float
    max_mm: float
    distortion_mean_mm: float
    total_mean_mm: float
    passed: bool

    def as_dict(self) -> dict[str, float | bool]:
        """Plain dict (for tables and JSON)."""
        return asdict(self)


def brain_points(mask: nib.Nifti1Image, max_points: int = 20000) -> np.ndarray:
    """World coordinates (N, 3) of (an even subsample of) a mask's voxels."""
    idx = np.argwhere(np.asarray(mask.dataobj) > 0.5)
    if len(idx) == 0:
        raise ValueError("brain_points: the mask is empty")
    idx = idx[:: max(1, int(np.ceil(len(idx) / max_points)))]
    return idx @ mask.affine[:3, :3].T + mask.affine[:3, 3]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ np.asarray(matrix)[:3, :3].T + np.asarray(matrix)[:3, 3]


def coreg_accuracy(
    estimated: np.ndarray,
    true: np.ndarray,
    points_mm: np.ndarray,
    *,
    shift_mm: np.ndarray | None = None,
    threshold_mm: float = COREG_ERROR_THRESHOLD_MM,
) -> CoregAccuracy:
    """Score an estimated T1w → BOLD-reference map against the true one.

    Parameters
    ----------
    estimated, true : ndarray of shape (4, 4)
        Rigid point maps, T1w → BOLD reference (RAS mm).
    points_mm : ndarray of shape (N, 3)
        T1w brain points (:func:`brain_points`).
    shift_mm : ndarray of shape (N, 3), optional
        True EPI displacement of each point's image in the BOLD reference (mm, world vectors).
    threshold_mm : float
        QC threshold on the mean rigid error.

    Returns
    -------
    CoregAccuracy
    """
    est = _apply(estimated, points_mm)
    ref = _apply(true, points_mm)
    err = np.linalg.norm(est - ref, axis=1)
    if shift_mm is None:
        shift_mm = np.zeros_like(points_mm)
    total = np.linalg.norm(est - (ref + shift_mm), axis=1)
    mean = float(err.mean())
    return CoregAccuracy(
        mean_mm=mean,
        max_mm=float(err.max()),
        distortion_mean_mm=float(np.linalg.norm(shift_mm, axis=1).mean()),
        total_mean_mm=float(total.mean()),
        passed=bool(mean <= threshold_mm),
    )
