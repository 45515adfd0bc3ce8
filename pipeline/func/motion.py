r"""Head-motion estimation: one rigid transform per volume, registered to a BOLD reference.

Every volume :math:`V_t` gets a rigid map :math:`M_t` (RAS mm) that takes a point of the reference
to the same head point in volume :math:`t`: :math:`V_t(M_t\,p) \approx F(p)`. In ANTs/ITK terms
:math:`M_t` is the fixed→moving transform with the reference fixed (what fMRIPrep's
``from-orig_to-boldref`` ITK file holds), and it is what ``desc-hmc_xfm.txt`` stores.

**Parameter convention.** The six parameters follow fMRIPrep's names: ``trans_x/y/z`` (mm) and
``rot_x/y/z`` (rad, extrinsic ``xyz`` Euler angles: :math:`R = R_z R_y R_x`), *about the centre of
the BOLD voxel grid* :math:`c` (:func:`grid_centre`), as MCFLIRT's parameters that fMRIPrep
reports: :math:`M_t(p) = R_t (p - c) + c + t_t`. The rotation centre matters: about the scanner
origin, a rotation of a head lying 100 mm from it would add 1.7 mm/° to the translations, and
framewise displacement would count every rotation twice. The matrices themselves do not depend on
the convention.

The default estimator is Gauss–Newton on the sum of squared differences with a global gain,

.. math::

    \min_{M, s}\ \sum_i \big((1+s)\,V_t(M\,p_i) - F(p_i)\big)^2,

over the reference's foreground voxels :math:`p_i`, with compositional updates
:math:`M \leftarrow M \circ \exp(\delta)` about the foreground centre, on a smoothed and an
unsmoothed level. Same-modality volumes of one run make SSD the natural cost; the gain absorbs the
global signal and drift. ``method="ants"`` runs ``ants.registration`` per volume instead
(slower, kept for comparison). We wrote our own estimator because per-volume ANTs costs a process
start and a full pyramid per volume; ``benchmarks/func.py`` compares the two, and
``ants.motion_correction``, on the same runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


# --------------------------------------------------------------------------- parameters
def grid_centre(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) position of the centre of a voxel grid: the motion parameters' rotation centre.

    >>> grid_centre((3, 3, 3), np.diag([2.0, 2.0, 2.0, 1.0])).tolist()
    [2.0, 2.0, 2.0]
    """
    mid = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    return np.asarray(affine, dtype=float)[:3, :3] @ mid + np.asarray(affine, dtype=float)[:3, 3]


def _centre(centre: Sequence[float] | None) -> np.ndarray:
    return np.zeros(3) if centre is None else np.asarray(centre, dtype=float)


def params_to_matrix(params: Sequence[float], centre: Sequence[float] | None = None) -> np.ndarray:
    r"""4×4 RAS matrix of ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)`` (rad, ``xyz`` Euler).

    The rotation is about ``centre`` (mm; the scanner origin when omitted):
    :math:`p \mapsto R (p - c) + c + t`.
    """
    c = _centre(centre)
    mat = np.eye(4)
    mat[:3, :3] = Rotation.from_euler("xyz", np.asarray(params[3:6], dtype=float)).as_matrix()
    mat[:3, 3] = np.asarray(params[:3], dtype=float) + c - mat[:3, :3] @ c
    return mat


def matrix_to_params(matrix: np.ndarray, centre: Sequence[float] | None = None) -> np.ndarray:
    """Inverse of :func:`params_to_matrix`: the six parameters of a rigid 4×4 matrix about ``centre``."""
    c = _centre(centre)
    matrix = np.asarray(matrix, dtype=float)
    rot = Rotation.from_matrix(matrix[:3, :3]).as_euler("xyz")
    return np.concatenate([matrix[:3, 3] - c + matrix[:3, :3] @ c, rot])


def matrices_to_frame(matrices: np.ndarray, centre: Sequence[float] | None = None) -> pd.DataFrame:
    """Motion parameters table (columns :data:`MOTION_COLUMNS`) of a stack of 4×4 matrices."""
    return pd.DataFrame(
        [matrix_to_params(m, centre) for m in matrices], columns=list(MOTION_COLUMNS)
    )


# --------------------------------------------------------------------------- helpers
def foreground(volume: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Foreground mask: voxels above ``fraction`` of the robust maximum, largest component, filled."""
    vol = np.asarray(volume, dtype=np.float32)
    mask = vol > fraction * float(np.percentile(vol, 99.0))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == int(np.argmax(sizes)) + 1
    return ndimage.binary_fill_holes(mask)


def _world(points_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points_vox @ affine[:3, :3].T + affine[:3, 3]


@dataclass
class _Moving:
    """A volume with its world-space gradient, ready for trilinear sampling."""

    channels: np.ndarray  # (4, X, Y, Z): value, d/dx, d/dy, d/dz (world mm)
    inv_affine: np.ndarray

    @classmethod
    def build(cls, volume: np.ndarray, affine: np.ndarray, sigma_vox: float) -> _Moving:
        vol = np.asarray(volume, dtype=np.float32)
        if sigma_vox > 0:
            vol = ndimage.gaussian_filter(vol, sigma_vox)
        grads = np.stack(np.gradient(vol), axis=0)  # voxel-index gradients
        # world gradient: g_world = A^{-T} g_vox
        a_inv_t = np.linalg.inv(affine[:3, :3]).T
        gworld = np.einsum("ij,jxyz->ixyz", a_inv_t, grads)
        return cls(np.concatenate([vol[None], gworld]).astype(np.float32), np.linalg.inv(affine))

    def sample(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vox = points_mm @ self.inv_affine[:3, :3].T + self.inv_affine[:3, 3]
        coords = vox.T
        out = np.stack(
            [ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in self.channels]
        )
        shape = np.array(self.channels.shape[1:])
        inside = np.all((vox >= 0) & (vox <= shape - 1), axis=1)
        return out, inside


def _small_rigid(delta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rigid map :math:`q = R(\\omega)(p - c) + c + d` for ``delta = (d, omega)``."""
    mat = np.eye(4)
    rot = Rotation.from_rotvec(delta[3:]).as_matrix()
    mat[:3, :3] = rot
    mat[:3, 3] = centre + delta[:3] - rot @ centre
    return mat


def register_rigid(
    fixed: np.ndarray,
    moving: np.ndarray,
    affine: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    init: np.ndarray | None = None,
    sigmas_vox: Sequence[float] = (1.0, 0.0),
    max_iter: int = 30,
    tol: float = 1e-4,
    max_points: int | None = 6000,
    moving_affine: np.ndarray | None = None,
) -> np.ndarray:
    """Rigid Gauss–Newton SSD registration of two volumes (see the module docstring).

    Parameters
    ----------
    fixed, moving : ndarray of shape (X, Y, Z)
        Reference and moving volumes.
    affine : ndarray of shape (4, 4)
        Voxel → RAS mm affine of ``fixed`` (and of ``moving`` unless ``moving_affine`` is given).
    mask : ndarray of bool, optional
        Fixed voxels that enter the cost; default :func:`foreground` of ``fixed``.
    init : ndarray of shape (4, 4), optional
        Starting fixed→moving map (identity by default).
    sigmas_vox : sequence of float, default=(1.0, 0.0)
        Gaussian smoothing (voxels) of both images at each level, coarse to fine.
    max_iter : int, default=30
        Gauss–Newton iterations per level at most.
    tol : float, default=1e-4
        Stop when the update moves no brain point by more than ``tol`` × 100 mm.
    max_points : int or None, default=6000
        Use at most this many mask voxels (an even subsample: every k-th voxel in index order).
    moving_affine : ndarray of shape (4, 4), optional
        Affine of ``moving`` when it differs from ``affine``.

    Returns
    -------
    ndarray of shape (4, 4)
        The fixed→moving rigid map :math:`M` (RAS mm) with :math:`V(M p) \\approx F(p)`.
    """
    affine = np.asarray(affine, dtype=float)
    mov_affine = affine if moving_affine is None else np.asarray(moving_affine, dtype=float)
    if mask is None:
        mask = foreground(fixed)
    idx = np.argwhere(mask)
    if len(idx) < 20:
        raise ValueError(f"register_rigid: only {len(idx)} foreground voxels in the fixed image")
    if max_points is not None and len(idx) > max_points:
        idx = idx[:: int(np.ceil(len(idx) / max_points))]
    points = _world(idx.astype(float), affine)
    centre = points.mean(axis=0)
    arm = points - centre
    current = np.eye(4) if init is None else np.asarray(init, dtype=float).copy()
    for sigma in sigmas_vox:
        fix = np.asarray(fixed, dtype=np.float32)
        if sigma > 0:
            fix = ndimage.gaussian_filter(fix, sigma)
        target = fix[tuple(idx.T)].astype(np.float64)
        mov = _Moving.build(moving, mov_affine, sigma)
        gain = 0.0
        for _ in range(max_iter):
            warped = points @ current[:3, :3].T + current[:3, 3]
            samples, inside = mov.sample(warped)
            value = samples[0].astype(np.float64)
            grad_world = samples[1:].T.astype(np.float64)  # (N, 3)
            g = (1.0 + gain) * grad_world @ current[:3, :3]  # R^T ∇V as rows
            jac = np.column_stack([g, np.cross(arm, g), value])
            resid = (1.0 + gain) * value - target
            w = inside.astype(np.float64)
            # sums over voxels by einsum, not BLAS: the same bits whatever the thread count
            jtj = np.einsum("ni,nj->ij", jac * w[:, None], jac)
            jtr = np.einsum("ni,n->i", jac * w[:, None], resid)
            try:
                step = -np.linalg.solve(jtj + 1e-9 * np.trace(jtj) * np.eye(7), jtr)
            except np.linalg.LinAlgError:  # pragma: no cover - degenerate data
                break
            current = current @ _small_rigid(step[:6], centre)
            gain += step[6]
            if np.linalg.norm(step[:3]) + 100.0 * np.linalg.norm(step[3:6]) < tol * 100.0:
                break
    return current


def _ants_rigid(fixed, moving, affine, mask, iterations: Sequence[int]) -> np.ndarray:
    """Per-volume rigid registration with ``ants.registration`` (fixed→moving RAS map)."""
    import tempfile

    import ants
    import nibabel as nib

    from pipeline.antsio import nib_to_ants, read_affine

    fix = nib_to_ants(nib.Nifti1Image(np.asarray(fixed, np.float32), affine))
    mov = nib_to_ants(nib.Nifti1Image(np.asarray(moving, np.float32), affine))
    msk = nib_to_ants(nib.Nifti1Image(mask.astype(np.float32), affine))
    with tempfile.TemporaryDirectory() as tmp:
        reg = ants.registration(
            fix,
            mov,
            type_of_transform="Rigid",
            initial_transform="Identity",
            aff_metric="meansquares",
            aff_iterations=tuple(iterations),
            aff_shrink_factors=(2, 1)[: len(iterations)] if len(iterations) <= 2 else (4, 2, 1),
            aff_smoothing_sigmas=(1, 0)[: len(iterations)] if len(iterations) <= 2 else (2, 1, 0),
            mask=msk,
            outprefix=f"{tmp}/hmc_",
        )
        return read_affine(reg["fwdtransforms"][0])


@dataclass
class MotionEstimate:
    """Result of :func:`estimate_motion`.

    Attributes
    ----------
    matrices : ndarray of shape (T, 4, 4)
        Reference → volume point maps :math:`M_t` (RAS mm).
    reference : ndarray of shape (X, Y, Z)
        The reference volume the run was registered to (mean of the realigned volumes).
    mask : ndarray of bool
        The reference foreground that entered the cost.
    centre : ndarray of shape (3,)
        Rotation centre of the parameters (mm): the centre of the BOLD grid.
    """

    matrices: np.ndarray
    reference: np.ndarray
    mask: np.ndarray
    centre: np.ndarray

    @property
    def parameters(self) -> pd.DataFrame:
        """Six motion parameters per volume (:data:`MOTION_COLUMNS`), about :attr:`centre`."""
        return matrices_to_frame(self.matrices, self.centre)


def resample_volume(volume: np.ndarray, affine: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Pull ``volume`` back through the point map ``matrix``: ``out(p) = V(M p)`` on the same grid."""
    vox_map = np.linalg.inv(affine) @ matrix @ affine
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        vox_map[:3, :3],
        vox_map[:3, 3],
        order=1,
        mode="nearest",
    )


def estimate_motion(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    method: str = "gauss-newton",
    n_passes: int = 2,
    sigmas_vox: Sequence[float] = (1.0, 0.0),
    max_iter: int = 30,
    ants_iterations: Sequence[int] = (40, 20),
    progress: bool = False,
) -> MotionEstimate:
    """Rigid head motion of a 4-D run, one transform per volume.

    Pass 1 registers every volume to the first one (each starting from the previous estimate);
    each further pass registers every volume to the mean of the realigned volumes.

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
        The BOLD run (non-steady-state volumes already removed).
    affine : ndarray of shape (4, 4)
        Voxel → RAS mm.
    method : {"gauss-newton", "ants"}, default="gauss-newton"
    n_passes : int, default=2
        Registration passes (≥ 1).
    sigmas_vox, max_iter
        Gauss–Newton levels and iterations (:func:`register_rigid`).
    ants_iterations : sequence of int, default=(40, 20)
        ANTs iterations per level (``method="ants"``).
    progress : bool, default=False
        Show a progress bar over volumes.

    Returns
    -------
    MotionEstimate
    """
    if method not in ("gauss-newton", "ants"):
        raise ValueError(f"method must be 'gauss-newton' or 'ants', got {method!r}")
    data = np.asarray(data, dtype=np.float32)
    n_vol = data.shape[3]
    reference = data[..., 0]
    matrices = np.tile(np.eye(4), (n_vol, 1, 1))
    mask = foreground(reference)
    for p in range(max(1, n_passes)):
        mask = ndimage.binary_dilation(foreground(reference), iterations=1)
        previous = np.eye(4)
        bar = tqdm(range(n_vol), desc=f"head motion (pass {p + 1})", disable=not progress)
        for t in bar:
            if method == "ants":
                matrices[t] = _ants_rigid(reference, data[..., t], affine, mask, ants_iterations)
            else:
                start = matrices[t] if p > 0 else previous
                matrices[t] = register_rigid(
                    reference,
                    data[..., t],
                    affine,
                    mask=mask,
                    init=start,
                    sigmas_vox=sigmas_vox if p == 0 else sigmas_vox[-1:],
                    max_iter=max_iter,
                )
            previous = matrices[t]
        if p < n_passes - 1:
            reference = _realigned_mean(data, affine, matrices)
    return MotionEstimate(
        matrices, _realigned_mean(data, affine, matrices), mask, grid_centre(data.shape, affine)
    )


def _realigned_mean(
    data: np.ndarray, affine: np.ndarray, matrices: np.ndarray, max_volumes: int = 20
) -> np.ndarray:
    """Mean of (at most ``max_volumes`` evenly spaced) volumes pulled back to the reference."""
    n_vol = data.shape[3]
    picks = np.unique(np.linspace(0, n_vol - 1, min(n_vol, max_volumes)).round().astype(int))
    vols = [resample_volume(data[..., t], affine, matrices[t]) for t in picks]
    return np.mean(vols, axis=0).astype(np.float32)
