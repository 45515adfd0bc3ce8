r"""Rigid → affine → SyN registration of a T1w to the template, with a checked pose-robust start.

Every stage is *checked*: its result is scored by the mutual information (rank-normalised images,
inside the template brain mask) of the template with the subject pulled back through the
transform, and a stage that lowers the score by more than ``stage_tolerance`` is rejected (the
previous transform is kept; a rejected rigid/affine stage is retried once at a finer sampling).

Transforms follow the ANTs convention (template points → subject points). The final transforms
are written as ITK HDF5 files: ``forward.h5`` resamples subject images onto the template grid
(``ants.apply_transforms(fixed=template, moving=subject, transformlist=[forward.h5])``) and
``inverse.h5`` resamples template images onto the subject grid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ants
import nibabel as nib
import numpy as np

from pipeline.anat.options import AnatOptions
from pipeline.anat.pose import foreground_mask, mutual_information, rank_normalize, search_pose
from pipeline.antsio import nib_to_ants, read_affine, strip_hdf5_times, write_affine

logger = logging.getLogger(__name__)


def ants_random_seed(seed: int) -> int:
    """The ``--random-seed`` value ANTs gets for our ``seed``: always non-zero.

    antsRegistration reads ``--random-seed 0`` as "seed from the system clock", so the
    pipeline's default seed 0 would make every run differ; seeds map to ``seed + 1``
    (within ITK's positive 32-bit range).
    """
    return int(seed) % (2**31 - 2) + 1


@contextlib.contextmanager
def ants_seed(seed: int) -> Iterator[None]:
    """Make ANTs registrations reproducible: pass ``--random-seed`` (see
    :func:`ants_random_seed`) inside the block."""
    previous = ants.config._random_seed
    ants.config._random_seed = ants_random_seed(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous


@dataclass
class StageRecord:
    """One registration stage and its check."""

    stage: str
    score_before: float
    score_after: float
    accepted: bool
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float | str | bool]:
        return {
            "stage": self.stage,
            "mi_before": round(self.score_before, 6),
            "mi_after": round(self.score_after, 6),
            "accepted": self.accepted,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class RegistrationResult:
    """Outcome of :func:`register_to_template`.

    Attributes
    ----------
    forward : Path
        ITK HDF5 transform, template → subject points (resamples subject onto the template).
    inverse : Path
        ITK HDF5 transform, subject → template points (resamples template onto the subject).
    affine : ndarray of shape (4, 4)
        The linear part (RAS mm, template → subject).
    pose : ndarray of shape (4, 4)
        The pose found by the SO(3) search (before ANTs refinement).
    stages : list of StageRecord
    """

    forward: Path
    inverse: Path
    affine: np.ndarray
    pose: np.ndarray
    stages: list[StageRecord] = field(default_factory=list)

    def report(self) -> dict:
        """JSON-serialisable summary."""
        return {
            "pose_matrix": np.round(self.pose, 6).tolist(),
            "affine_matrix": np.round(self.affine, 6).tolist(),
            "stages": [s.as_dict() for s in self.stages],
        }


def _rank_image(
    img: nib.spatialimages.SpatialImage, mask: np.ndarray | None = None
) -> ants.ANTsImage:
    data = np.asarray(img.get_fdata(dtype=np.float32))
    return nib_to_ants(nib.Nifti1Image(rank_normalize(data, mask), img.affine))


def _registration_grid(
    template: nib.spatialimages.SpatialImage, voxel_mm: float | None
) -> ants.ANTsImage:
    grid = nib_to_ants(template)
    if voxel_mm is not None and not np.allclose(grid.spacing, voxel_mm):
        grid = ants.resample_image(
            ants.smooth_image(grid, 0.5 * voxel_mm), (voxel_mm,) * 3, False, 0
        )
    return grid


class _Scorer:
    """Mutual information of the template with the subject pulled back through transforms."""

    def __init__(self, fixed: ants.ANTsImage, moving: ants.ANTsImage, region: np.ndarray):
        self.fixed = fixed
        self.moving = moving
        self.region = region
        self.values = fixed.numpy()[region]

    def __call__(self, transforms: Sequence[str]) -> float:
        warped = ants.apply_transforms(
            self.fixed, self.moving, list(transforms), interpolator="linear"
        )
        return mutual_information(self.values, np.clip(warped.numpy()[self.region], 0, 1), bins=32)


def _linear_stage(
    kind: str,
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    init: str,
    prefix: str,
    iterations: Sequence[int],
    shrink: Sequence[int],
    sigmas: Sequence[float],
    sampling: float,
    scale: float = 1.0,
) -> str:
    """One ANTs rigid/affine stage; ``scale`` = 2 mm / grid voxel size rescales the pyramid."""
    shrink = [max(1, int(round(f * scale))) for f in shrink]
    sigmas = [s * scale for s in sigmas]
    out = ants.registration(
        fixed,
        moving,
        type_of_transform=kind,
        initial_transform=[init],
        outprefix=prefix,
        aff_metric="mattes",
        aff_iterations=tuple(iterations),
        aff_shrink_factors=tuple(shrink),
        aff_smoothing_sigmas=tuple(sigmas),
        aff_random_sampling_rate=sampling,
    )
    return out["fwdtransforms"][0]


def register_to_template(
    subject: nib.spatialimages.SpatialImage,
    template: nib.spatialimages.SpatialImage,
    template_mask: nib.spatialimages.SpatialImage,
    out_dir: str | os.PathLike[str],
    options: AnatOptions | None = None,
    *,
    seed: int = 0,
    threads: int | None = None,
) -> RegistrationResult:
    """Register a (bias-corrected) T1w to the template: pose search, rigid, affine, SyN.

    ITK reads its thread count once per process, and multi-threaded metric sums make ANTs'
    linear stages differ in the last bits between runs. With ``threads`` set, the registration
    runs in a fresh (spawned) process with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=threads``;
    ``threads=1`` makes the result bit-identical for a given ``seed``.

    Parameters
    ----------
    subject : nibabel image
        Subject T1w, any orientation and intensity gauge.
    template, template_mask : nibabel images
        Template T1w and brain mask (same grid).
    out_dir : path-like
        Where ``forward.h5``, ``inverse.h5`` (and intermediate files) are written.
    options : AnatOptions, optional
        Search and iteration settings; defaults if omitted.
    seed : int, default=0
        ANTs random seed (metric sampling).
    threads : int, optional
        Run in a child process with this many ITK threads (see above); None: in this process.

    Returns
    -------
    RegistrationResult
    """
    if threads is not None:
        return _in_child(threads, subject, template, template_mask, out_dir, options, seed=seed)
    return _register(subject, template, template_mask, out_dir, options, seed=seed)


def _in_child(threads: int, *args, **kwargs) -> RegistrationResult:
    """Run :func:`_register` in a fresh interpreter with ``threads`` ITK threads
    (:func:`pipeline._itk_child.call_with_itk_threads`), its stage lines logged here."""
    from pipeline._itk_child import call_with_itk_threads

    Path(args[3]).mkdir(parents=True, exist_ok=True)
    return call_with_itk_threads(
        threads, "pipeline.anat.registration:_register", *args, forward="stage", **kwargs
    )


def _register(
    subject: nib.spatialimages.SpatialImage,
    template: nib.spatialimages.SpatialImage,
    template_mask: nib.spatialimages.SpatialImage,
    out_dir: str | os.PathLike[str],
    options: AnatOptions | None = None,
    *,
    seed: int = 0,
) -> RegistrationResult:
    import time

    options = options or AnatOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="reg_", dir=out))
    prefix = str(work) + os.sep
    try:
        mask_data = np.asarray(template_mask.get_fdata()) > 0.5
        fixed = _registration_grid(
            nib.Nifti1Image(rank_normalize(template.get_fdata(), mask_data), template.affine),
            options.registration_voxel_mm,
        )
        region_img = ants.apply_transforms(
            fixed, nib_to_ants(template_mask), [], interpolator="linear"
        )
        region = region_img.numpy() > 0.5
        sdata = np.asarray(subject.get_fdata(dtype=np.float32))
        moving = _rank_image(subject, foreground_mask(sdata))
        vox = float(np.mean(fixed.spacing))
        if min(moving.spacing) < 0.9 * vox:
            moving = ants.resample_image(ants.smooth_image(moving, 0.5 * vox), (vox,) * 3, False, 0)
        score = _Scorer(fixed, moving, region)
        stages: list[StageRecord] = []

        t0 = time.perf_counter()
        identity = prefix + "header.mat"
        write_affine(np.eye(4), identity)
        current, current_score = identity, score([identity])
        pose = np.eye(4)
        if options.pose_search:
            result = search_pose(
                template,
                template_mask,
                subject,
                n_rotations=options.pose_n_rotations,
                coarse_voxel_mm=options.pose_coarse_mm,
                fine_voxel_mm=options.pose_fine_mm,
                n_refine=options.pose_n_refine,
            )
            candidate = write_affine(result.matrix, prefix + "pose.mat")
            cand_score = score([str(candidate)])
            accepted = cand_score >= current_score - options.stage_tolerance
            stages.append(
                StageRecord("pose", current_score, cand_score, accepted, time.perf_counter() - t0)
            )
            if accepted:
                current, current_score, pose = str(candidate), cand_score, result.matrix

        with ants_seed(seed):
            for kind, its, shrink, sig in (
                (
                    "Rigid",
                    options.rigid_iterations,
                    options.rigid_shrink_factors,
                    options.rigid_smoothing_sigmas,
                ),
                (
                    "Affine",
                    options.affine_iterations,
                    options.affine_shrink_factors,
                    options.affine_smoothing_sigmas,
                ),
            ):
                best_file, best_score = current, current_score
                accepted = False
                for attempt, rate in enumerate(
                    (options.linear_sampling_rate, min(1.0, 3 * options.linear_sampling_rate))
                ):
                    t0 = time.perf_counter()
                    tx = _linear_stage(
                        kind,
                        fixed,
                        moving,
                        current,
                        f"{prefix}{kind.lower()}{attempt}_",
                        its,
                        shrink,
                        sig,
                        rate,
                        scale=min(1.0, 2.0 / vox),
                    )
                    new_score = score([tx])
                    ok = new_score >= current_score - options.stage_tolerance
                    stages.append(
                        StageRecord(
                            f"{kind.lower()}" + ("" if attempt == 0 else "_retry"),
                            current_score,
                            new_score,
                            ok,
                            time.perf_counter() - t0,
                        )
                    )
                    if ok:
                        best_file, best_score, accepted = tx, new_score, True
                        break
                if not accepted:
                    logger.warning("%s stage rejected twice; keeping the previous transform", kind)
                current, current_score = best_file, best_score
            affine = read_affine(current)

            forward, inverse = out / "forward.h5", out / "inverse.h5"
            syn_ok = False
            if options.syn:
                t0 = time.perf_counter()
                reg = ants.registration(
                    fixed,
                    moving,
                    type_of_transform="SyNOnly",
                    initial_transform=[current],
                    outprefix=prefix + "syn_",
                    reg_iterations=tuple(options.syn_iterations),
                    syn_metric=options.syn_metric,
                    syn_sampling=32 if options.syn_metric == "mattes" else 4,
                    write_composite_transform=True,
                )
                new_score = score([reg["fwdtransforms"]])
                syn_ok = new_score >= current_score - options.stage_tolerance
                stages.append(
                    StageRecord("syn", current_score, new_score, syn_ok, time.perf_counter() - t0)
                )
                if syn_ok:
                    shutil.copyfile(reg["fwdtransforms"], forward)
                    shutil.copyfile(reg["invtransforms"], inverse)
            if not syn_ok:
                write_affine(affine, forward)
                write_affine(np.linalg.inv(affine), inverse)
            for path in (forward, inverse):
                strip_hdf5_times(path)
        for s in stages:
            logger.info(
                "stage %-12s MI %.4f -> %.4f %s (%.1f s)",
                s.stage,
                s.score_before,
                s.score_after,
                "accepted" if s.accepted else "REJECTED",
                s.seconds,
            )
        return RegistrationResult(
            forward=forward, inverse=inverse, affine=affine, pose=pose, stages=stages
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
