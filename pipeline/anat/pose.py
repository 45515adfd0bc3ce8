r"""Pose search over the whole rotation group :math:`SO(3)`.

Gradient-based rigid registration only converges from poses close to the right one. This module
finds a starting pose globally: it scores many rigid maps :math:`x \mapsto R(x - c_f) + m` (fixed
template point :math:`x` to moving subject point) by the mutual information

.. math::

    I(F; M_T) = \sum_{a,b} p_{ab} \log \frac{p_{ab}}{p_a\, p_b}

between the template and the subject resampled through the candidate map, on downsampled,
rank-normalised images. Rank normalisation (each image replaced by its empirical CDF over its
foreground) makes the score invariant to monotone intensity maps (the intensity gauge).

Candidates are

* the 24 proper signed permutations of the principal axes (covering sign and axis-order
  ambiguities of the inertia tensors), and
* a super-Fibonacci cover of :math:`SO(3)` (Alexa, CVPR 2022), translated so that the centroids
  agree,

then the best distinct candidates are refined locally (Powell) at two resolutions.
All matrices are 4×4 RAS point maps, fixed → moving (the ANTs convention).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

logger = logging.getLogger(__name__)

_PHI = np.sqrt(2.0)
_PSI = 1.533751168755204288118041


def so3_cover(n: int) -> np.ndarray:
    r"""Approximately uniform rotations from a super-Fibonacci spiral on :math:`S^3`.

    .. math::

        s_i = i + \tfrac12,\quad r_i = \sqrt{s_i/n},\quad R_i = \sqrt{1 - s_i/n},\quad
        q_i = (r_i \sin \alpha_i, r_i \cos \alpha_i, R_i \sin \beta_i, R_i \cos \beta_i),

    with :math:`\alpha_i = 2\pi s_i/\phi`, :math:`\beta_i = 2\pi s_i/\psi` (Alexa 2022).

    Parameters
    ----------
    n : int
        Number of rotations.

    Returns
    -------
    ndarray of shape (n, 3, 3)
        Rotation matrices.
    """
    s = np.arange(n) + 0.5
    r = np.sqrt(s / n)
    big_r = np.sqrt(1.0 - s / n)
    alpha = 2 * np.pi * s / _PHI
    beta = 2 * np.pi * s / _PSI
    quat = np.stack(
        [r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], 1
    )
    return Rotation.from_quat(quat).as_matrix()


def octahedral_group() -> np.ndarray:
    """The 24 proper signed permutation matrices (rotations mapping the axes onto the axes)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            mat = np.zeros((3, 3))
            mat[range(3), perm] = signs
            if np.linalg.det(mat) > 0:
                out.append(mat)
    return np.array(out)


def rank_normalize(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Replace intensities by their empirical CDF over the foreground; background becomes 0.

    The result lies in [0, 1] and is unchanged by any strictly increasing intensity map.

    Parameters
    ----------
    data : ndarray
        Image intensities.
    mask : ndarray of bool, optional
        Foreground. Default: voxels above 5 % of the 99.5th percentile of positive voxels.
    """
    data = np.asarray(data, dtype=np.float64)
    if mask is None:
        mask = foreground_mask(data)
    out = np.zeros(data.shape, dtype=np.float32)
    values = data[mask]
    if values.size:
        order = np.argsort(values, kind="stable")
        ranks = np.empty(values.size)
        ranks[order] = (np.arange(values.size) + 1.0) / values.size
        out[mask] = ranks
    return out


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Head foreground: above a low threshold relative to a robust maximum (gauge invariant).

    The threshold is the Otsu threshold of the voxels above the first percentile, which is
    unchanged by gains and offsets; small holes are closed.
    """
    data = np.asarray(data, dtype=np.float64)
    finite = data[np.isfinite(data)]
    lo, hi = np.percentile(finite, [1.0, 99.5])
    if hi <= lo:
        return data > lo
    hist, edges = np.histogram(np.clip(finite, lo, hi), bins=128, range=(lo, hi))
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    thr = centers[int(np.argmax(between))]
    mask = data > thr
    mask = ndimage.binary_closing(mask, iterations=1)
    return ndimage.binary_fill_holes(mask)


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    r"""Mutual information (nats) of two samples with values in [0, 1], equal-width bins.

    .. math:: I = \sum_{ij} p_{ij} \log\frac{p_{ij}}{p_i p_j}
    """
    ia = np.minimum((np.asarray(a) * bins).astype(np.intp), bins - 1)
    ib = np.minimum((np.asarray(b) * bins).astype(np.intp), bins - 1)
    joint = np.bincount(ia * bins + ib, minlength=bins * bins).reshape(bins, bins).astype(float)
    joint /= joint.sum()
    pa = joint.sum(1, keepdims=True)
    pb = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


@dataclass
class ScoringImages:
    """Fixed sample points/values and a moving volume, ready to score rigid maps.

    Attributes
    ----------
    points : ndarray of shape (P, 3)
        Fixed-space RAS points (template voxels in its dilated brain mask).
    values : ndarray of shape (P,)
        Rank-normalised template values at ``points``.
    moving : ndarray
        Rank-normalised moving volume.
    moving_inv_affine : ndarray of shape (4, 4)
        RAS → voxel map of ``moving``.
    fixed_centroid, moving_centroid : ndarray of shape (3,)
        Intensity-weighted centroids (RAS mm).
    fixed_axes, moving_axes : ndarray of shape (3, 3)
        Principal axes (columns, proper rotations).
    """

    points: np.ndarray
    values: np.ndarray
    moving: np.ndarray
    moving_inv_affine: np.ndarray
    fixed_centroid: np.ndarray
    moving_centroid: np.ndarray
    fixed_axes: np.ndarray
    moving_axes: np.ndarray

    def sample(self, matrices: np.ndarray) -> np.ndarray:
        """Moving values at the fixed points mapped by each 4×4 matrix; shape (K, P)."""
        matrices = np.asarray(matrices).reshape(-1, 4, 4)
        vox = np.einsum("ij,kjl->kil", self.moving_inv_affine, matrices)
        coords = np.einsum("kij,pj->kip", vox[:, :3, :3], self.points) + vox[:, :3, 3:4]
        flat = ndimage.map_coordinates(
            self.moving,
            coords.transpose(1, 0, 2).reshape(3, -1),
            order=1,
            mode="constant",
            cval=0.0,
        )
        return flat.reshape(len(matrices), -1)

    def score(self, matrices: np.ndarray, bins: int = 32) -> np.ndarray:
        """Mutual information of the template with the moving image through each matrix."""
        sampled = self.sample(matrices)
        return np.array([mutual_information(self.values, s, bins) for s in sampled])


def _moments(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted centroid and proper principal axes (columns, by decreasing variance)."""
    idx = np.argwhere(data > 0)
    w = data[data > 0].astype(float)
    pts = idx @ affine[:3, :3].T + affine[:3, 3]
    c = (w[:, None] * pts).sum(0) / w.sum()
    d = pts - c
    cov = (w[:, None] * d).T @ d / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    axes = evecs[:, ::-1]
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1
    return c, axes


def _downsample(
    img: nib.spatialimages.SpatialImage, voxel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smooth and resample ``img`` to an isotropic grid; returns (data, affine)."""
    data = np.asarray(img.get_fdata(dtype=np.float32))
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    factor = voxel_size / zooms
    sigma = np.sqrt(np.maximum(factor**2 - 1.0, 0.0)) / 2.0
    if np.any(sigma > 0):
        data = ndimage.gaussian_filter(data, sigma)
    shape = np.maximum(np.ceil(np.array(data.shape) / factor).astype(int), 2)
    step = np.diag(np.append(factor, 1.0))
    new_affine = img.affine @ step
    grid = np.indices(shape).reshape(3, -1).astype(float) * factor[:, None]
    out = ndimage.map_coordinates(data, grid, order=1, mode="nearest").reshape(shape)
    return out.astype(np.float32), new_affine


def prepare_scoring(
    fixed: nib.spatialimages.SpatialImage,
    fixed_mask: nib.spatialimages.SpatialImage,
    moving: nib.spatialimages.SpatialImage,
    voxel_size: float,
    dilate_mm: float = 8.0,
    max_points: int | None = None,
) -> ScoringImages:
    """Downsample and rank-normalise fixed/moving images for pose scoring.

    Parameters
    ----------
    fixed, fixed_mask : nibabel images
        Template and its brain mask.
    moving : nibabel image
        Subject image (any orientation).
    voxel_size : float
        Isotropic voxel size (mm) of the scoring grid.
    dilate_mm : float, default=8.0
        Dilation of the template mask defining where the fixed points lie.
    max_points : int, optional
        Keep at most this many fixed points (a regular stride through them; deterministic).
    """
    fdata, faff = _downsample(fixed, voxel_size)
    mdata, maff = _downsample(fixed_mask, voxel_size)
    sdata, saff = _downsample(moving, voxel_size)
    fmask = mdata > 0.5
    it = max(int(round(dilate_mm / voxel_size)), 0)
    region = ndimage.binary_dilation(fmask, iterations=it) if it else fmask
    frank = rank_normalize(fdata, fmask)
    srank = rank_normalize(sdata, foreground_mask(sdata))
    idx = np.argwhere(region)
    if max_points is not None and len(idx) > max_points:
        idx = idx[:: int(np.ceil(len(idx) / max_points))]
    points = idx @ faff[:3, :3].T + faff[:3, 3]
    fc, fax = _moments(frank, faff)
    sc, sax = _moments(srank, saff)
    return ScoringImages(
        points=points,
        values=frank[tuple(idx.T)],
        moving=srank,
        moving_inv_affine=np.linalg.inv(saff),
        fixed_centroid=fc,
        moving_centroid=sc,
        fixed_axes=fax,
        moving_axes=sax,
    )


def rigid_matrix(
    rotation: np.ndarray, fixed_center: np.ndarray, moving_point: np.ndarray
) -> np.ndarray:
    r"""4×4 map :math:`x \mapsto R(x - c_f) + m`."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = moving_point - rotation @ fixed_center
    return out


@dataclass
class PoseResult:
    """Outcome of :func:`search_pose`.

    Attributes
    ----------
    matrix : ndarray of shape (4, 4)
        Best rigid map, fixed (template) RAS → moving (subject) RAS.
    score : float
        Its mutual information on the finest search grid.
    header_score : float
        Mutual information of the header pose (identity map) on the same grid.
    n_candidates : int
        Number of candidate rotations scored.
    refined : list of tuple
        (coarse score, refined score) of each refined candidate.
    """

    matrix: np.ndarray
    score: float
    header_score: float
    n_candidates: int
    refined: list[tuple[float, float]] = field(default_factory=list)


def _refine(
    scoring: ScoringImages, start: np.ndarray, center: np.ndarray, bins: int, maxiter: int
) -> tuple[np.ndarray, float]:
    """Powell search on (rotation vector, moving point) around a starting rigid map."""
    r0 = start[:3, :3]
    m0 = start[:3, :3] @ center + start[:3, 3]

    def build(p: np.ndarray) -> np.ndarray:
        rot = Rotation.from_rotvec(p[:3]).as_matrix() @ r0
        return rigid_matrix(rot, center, m0 + p[3:] * 10.0)

    def cost(p: np.ndarray) -> float:
        return -float(scoring.score(build(p), bins)[0])

    res = optimize.minimize(
        cost,
        np.zeros(6),
        method="Powell",
        options={"maxfev": maxiter, "xtol": 1e-2, "ftol": 1e-4},
    )
    return build(res.x), -float(res.fun)


def _distinct(matrices: np.ndarray, scores: np.ndarray, k: int, min_angle: float) -> list[int]:
    """Indices of the ``k`` best candidates whose rotations differ by at least ``min_angle``."""
    chosen: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        rot = matrices[i, :3, :3]
        if all(
            np.degrees(Rotation.from_matrix(matrices[j, :3, :3].T @ rot).magnitude()) >= min_angle
            for j in chosen
        ):
            chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


def search_pose(
    fixed: nib.spatialimages.SpatialImage,
    fixed_mask: nib.spatialimages.SpatialImage,
    moving: nib.spatialimages.SpatialImage,
    *,
    n_rotations: int = 1000,
    coarse_voxel_mm: float = 8.0,
    fine_voxel_mm: float = 4.0,
    n_refine: int = 3,
    bins: int = 24,
    maxiter: int = 200,
    max_points: int = 12000,
) -> PoseResult:
    """Find the rigid pose of ``moving`` relative to ``fixed`` over the whole rotation group.

    Parameters
    ----------
    fixed, fixed_mask : nibabel images
        Template and its brain mask.
    moving : nibabel image
        Subject image, any orientation and intensity gauge.
    n_rotations : int, default=1000
        Size of the super-Fibonacci cover of SO(3) (in addition to the 24 principal-axes
        candidates and the header pose).
    coarse_voxel_mm, fine_voxel_mm : float, default=8.0, 4.0
        Voxel sizes of the global scoring grid and of the final refinement.
    n_refine : int, default=3
        Number of distinct best candidates (≥ 20° apart) refined locally.
    bins : int, default=24
        Histogram bins of the mutual information.
    maxiter : int, default=200
        Function evaluations per local refinement.
    max_points : int, default=12000
        Most fixed sample points on the fine grid.

    Returns
    -------
    PoseResult
    """
    coarse = prepare_scoring(fixed, fixed_mask, moving, coarse_voxel_mm)
    fc, mc = coarse.fixed_centroid, coarse.moving_centroid
    rotations = [np.eye(3)]
    rotations += [coarse.moving_axes @ p @ coarse.fixed_axes.T for p in octahedral_group()]
    rotations += list(so3_cover(n_rotations))
    candidates = np.array([rigid_matrix(r, fc, mc) for r in rotations])
    candidates = np.concatenate([np.eye(4)[None], candidates])  # header pose, untouched
    scores = np.concatenate(
        [
            coarse.score(chunk, bins)
            for chunk in np.array_split(candidates, max(len(candidates) // 200, 1))
        ]
    )
    best = _distinct(candidates, scores, n_refine, min_angle=20.0)
    logger.debug(
        "pose search: %d candidates, best coarse MI %.3f", len(candidates), scores[best[0]]
    )
    refined = []
    for i in best:
        mat, val = _refine(coarse, candidates[i], fc, bins, maxiter)
        refined.append((mat, float(scores[i]), val))
    refined.sort(key=lambda item: -item[2])
    fine = prepare_scoring(fixed, fixed_mask, moving, fine_voxel_mm, max_points=max_points)
    finalists = []
    for mat, _, _ in refined[:2]:
        finalists.append(_refine(fine, mat, fc, bins, maxiter))
    mat, val = max(finalists, key=lambda item: item[1])
    header = float(fine.score(np.eye(4), bins)[0])
    return PoseResult(
        matrix=mat,
        score=val,
        header_score=header,
        n_candidates=len(candidates),
        refined=[(c, v) for _, c, v in refined],
    )
