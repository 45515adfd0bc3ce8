r"""BOLD→T1w coregistration: rigid, Mattes mutual information (antspyx), with a QC record.

The result :math:`C` maps T1w points to BOLD-reference points (RAS mm; the ANTs fixed→moving
convention with the T1w fixed). The BOLD and the T1w of one session share the scanner frame, so the
registration starts from the identity (the header pose), not from a centre-of-mass guess that a
partial BOLD field of view would bias.

The registration is *checked*, as the anatomical stages are: QC scores the mutual information
(rank-normalised intensities, 32 bins) between the T1w and the BOLD reference pulled back onto the
T1w grid, inside the T1w brain mask, for the header pose and for the registration result; a result
that scores lower than the header pose is rejected (the header pose is kept, ``accepted = False``).
The Dice overlap of the BOLD foreground (pulled back) with the T1w brain mask is recorded too.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from pipeline.func.motion import foreground

logger = logging.getLogger(__name__)


@dataclass
class CoregResult:
    """Outcome of :func:`coregister`: the T1w→BOLD map and its QC metrics."""

    matrix: np.ndarray
    mi_before: float
    mi_after: float
    dice: float
    accepted: bool = True

    def as_dict(self) -> dict[str, float | list]:
        return {
            "coreg_mi_before": round(self.mi_before, 6),
            "coreg_mi": round(self.mi_after, 6),
            "coreg_dice": round(self.dice, 6),
            "coreg_accepted": self.accepted,
            "t1w_to_boldref": self.matrix.round(8).tolist(),
        }


def _pull_back(moving: nib.Nifti1Image, reference: nib.Nifti1Image, matrix: np.ndarray):
    from scipy import ndimage

    vox = np.linalg.inv(moving.affine) @ matrix @ reference.affine
    return ndimage.affine_transform(
        np.asarray(moving.get_fdata(dtype=np.float32)),
        vox[:3, :3],
        vox[:3, 3],
        output_shape=reference.shape[:3],
        order=1,
        mode="constant",
    )


def coregistration_qc(
    bold_ref: nib.Nifti1Image, t1w: nib.Nifti1Image, t1w_mask: np.ndarray, matrix: np.ndarray
) -> tuple[float, float]:
    """(mutual information, Dice) of the BOLD reference pulled back to the T1w through ``matrix``."""
    from pipeline.anat.pose import mutual_information, rank_normalize

    warped = _pull_back(bold_ref, t1w, matrix)
    mask = np.asarray(t1w_mask, bool)
    a = rank_normalize(np.asarray(t1w.get_fdata(dtype=np.float32)), mask)[mask]
    b = rank_normalize(warped, mask)[mask]
    mi = mutual_information(a, b)
    fg = _pull_back(
        nib.Nifti1Image(foreground(bold_ref.get_fdata()).astype(np.float32), bold_ref.affine),
        t1w,
        matrix,
    )
    fg = fg > 0.5
    dice = 2.0 * np.sum(fg & mask) / max(int(fg.sum() + mask.sum()), 1)
    return float(mi), float(dice)


def coregister(
    bold_ref: nib.Nifti1Image,
    t1w: nib.Nifti1Image,
    t1w_mask: nib.Nifti1Image,
    *,
    iterations: Sequence[int] = (100, 50),
    seed: int = 0,
) -> CoregResult:
    """Rigid MI registration of the BOLD reference to the (brain-masked) T1w.

    Parameters
    ----------
    bold_ref : nibabel image
        3-D BOLD reference (native BOLD space).
    t1w, t1w_mask : nibabel images
        Bias-corrected T1w and its brain mask (anatomical stage outputs).
    iterations : sequence of int, default=(100, 50)
        ANTs iterations per level (shrink factors 2, 1; smoothing 1, 0 voxels).
    seed : int, default=0
        ANTs random seed.

    Returns
    -------
    CoregResult
    """
    import ants

    from pipeline.anat.registration import ants_seed
    from pipeline.antsio import nib_to_ants, read_affine

    mask = np.asarray(t1w_mask.get_fdata()) > 0.5
    brain = nib.Nifti1Image(np.asarray(t1w.get_fdata(dtype=np.float32)) * mask, t1w.affine)
    # register at the BOLD resolution: the T1w detail finer than a BOLD voxel only costs time
    bold_vox = float(np.min(np.linalg.norm(bold_ref.affine[:3, :3], axis=0)))
    fixed = nib_to_ants(brain)
    if bold_vox > float(np.max(fixed.spacing)) * 1.25:
        fixed = ants.resample_image(fixed, (bold_vox,) * 3, use_voxels=False, interp_type=0)
    n = len(iterations)
    shrink = tuple(2 ** (n - 1 - i) for i in range(n))
    smooth = tuple(float(n - 1 - i) for i in range(n))
    with tempfile.TemporaryDirectory() as tmp, ants_seed(seed):
        reg = ants.registration(
            fixed,
            nib_to_ants(bold_ref),
            type_of_transform="Rigid",
            initial_transform="Identity",
            aff_metric="mattes",
            aff_sampling=32,
            aff_random_sampling_rate=0.5,
            aff_iterations=tuple(iterations),
            aff_shrink_factors=shrink,
            aff_smoothing_sigmas=smooth,
            outprefix=f"{tmp}/coreg_",
        )
        matrix = read_affine(reg["fwdtransforms"][0])
    mi_before, dice_before = coregistration_qc(bold_ref, t1w, mask, np.eye(4))
    mi_after, dice = coregistration_qc(bold_ref, t1w, mask, matrix)
    accepted = mi_after >= mi_before
    logger.info(
        "coregistration MI %.3f -> %.3f (%s), Dice %.3f",
        mi_before,
        mi_after,
        "accepted" if accepted else "rejected: header pose kept",
        dice,
    )
    if not accepted:
        return CoregResult(np.eye(4), mi_before, mi_before, dice_before, accepted=False)
    return CoregResult(matrix, mi_before, mi_after, dice, accepted=True)
