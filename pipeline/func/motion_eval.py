"""Head-motion estimates scored against a known truth (the demo's, or any planted motion).

Used by the tests and by ``benchmarks/func.py``: both sides are rigid point maps relative to the
same reference volume, turned into parameters about the same rotation centre (the BOLD grid's
centre, :mod:`pipeline.func.motion`) before framewise displacement is compared, so the measure
does not depend on where the scanner origin lies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.func.confounds import framewise_displacement
from pipeline.func.motion import MOTION_COLUMNS, matrices_to_frame


@dataclass(frozen=True)
class MotionAccuracy:
    """How well an estimate follows the true motion.

    Attributes
    ----------
    fd_r : float
        Pearson correlation of estimated and true framewise displacement (NaN when the true FD
        does not vary).
    fd_mae_mm : float
        Mean absolute FD error (mm).
    rotation_median_deg, rotation_max_deg : float
        Median and largest angle of :math:`R_{true}^\\top R_{est}` over volumes (degrees).
    translation_rms_mm : float
        RMS error of the translations about the grid centre (mm).
    false_outliers, missed_outliers, true_outliers : int
        Volumes flagged (FD above the threshold) where the truth is below it, the reverse, and the
        number the truth has.
    """

    fd_r: float
    fd_mae_mm: float
    rotation_median_deg: float
    rotation_max_deg: float
    translation_rms_mm: float
    false_outliers: int
    missed_outliers: int
    true_outliers: int

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for tables)."""
        return asdict(self)


def relative_to_first(matrices: np.ndarray) -> np.ndarray:
    """Maps relative to volume 0: :math:`M_t M_0^{-1}` (removes the choice of reference)."""
    matrices = np.asarray(matrices, dtype=float)
    return matrices @ np.linalg.inv(matrices[0])


def motion_accuracy(
    true_matrices: np.ndarray,
    estimated_matrices: np.ndarray,
    centre: np.ndarray,
    *,
    fd_threshold: float = 0.5,
) -> MotionAccuracy:
    """Score ``estimated_matrices`` against ``true_matrices`` (both ``(T, 4, 4)``).

    Both are first made relative to their volume 0 (:func:`relative_to_first`).

    Parameters
    ----------
    true_matrices, estimated_matrices : ndarray of shape (T, 4, 4)
        Reference → volume point maps (RAS mm).
    centre : ndarray of shape (3,)
        Rotation centre of the parameters (the BOLD grid's centre).
    fd_threshold : float, default=0.5
        FD (mm) above which a volume is a motion outlier, as in the confounds.

    Returns
    -------
    MotionAccuracy
    """
    true = relative_to_first(true_matrices)
    est = relative_to_first(estimated_matrices)
    if true.shape != est.shape:
        raise ValueError(f"{len(est)} estimated volumes for {len(true)} true ones")
    true_p = matrices_to_frame(true, centre)
    est_p = matrices_to_frame(est, centre)
    fd_t = framewise_displacement(true_p)[1:]
    fd_e = framewise_displacement(est_p)[1:]
    angles = np.degrees(
        [
            Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).magnitude()
            for a, b in zip(true, est, strict=True)
        ]
    )
    trans = (est_p[list(MOTION_COLUMNS[:3])] - true_p[list(MOTION_COLUMNS[:3])]).to_numpy()
    flag_t, flag_e = fd_t > fd_threshold, fd_e > fd_threshold
    r = float(np.corrcoef(fd_t, fd_e)[0, 1]) if np.std(fd_t) > 0 and np.std(fd_e) > 0 else np.nan
    return MotionAccuracy(
        fd_r=r,
        fd_mae_mm=float(np.mean(np.abs(fd_t - fd_e))),
        rotation_median_deg=float(np.median(angles)),
        rotation_max_deg=float(np.max(angles)),
        translation_rms_mm=float(np.sqrt(np.mean(trans**2))),
        false_outliers=int(np.sum(flag_e & ~flag_t)),
        missed_outliers=int(np.sum(flag_t & ~flag_e)),
        true_outliers=int(np.sum(flag_t)),
    )
