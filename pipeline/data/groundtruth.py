"""Read the demo dataset's ground truth back: what a perfect anatomical stage would have written,
and the true head motion.

Used where the functional stage is tested or benchmarked on its own (``tests/func``,
``benchmarks/func.py``): its anatomical inputs come from the true pose instead of a registration.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def _truth_dir(bids_dir: Path, subject: str) -> Path:
    return Path(bids_dir) / "sourcedata" / "groundtruth" / subject


def truth_anat(bids_dir: Path, subject: str, out_dir: Path) -> dict[str, Path]:
    """Anatomical-stage outputs built from the demo's ground-truth pose (no registration).

    The template→T1w transform is the true rigid pose (the small anatomical warp is ignored);
    the native brain mask is the template mask pulled through it; template-space maps are the
    2 mm template's own.

    Parameters
    ----------
    bids_dir : Path
        A dataset written by ``symprep demo-data``.
    subject : str
        ``sub-XX``.
    out_dir : Path
        Where the files go (created).

    Returns
    -------
    dict
        The anatomical outputs the functional workflow takes (``t1w_preproc``, ``t1w_mask``,
        ``std_mask``, ``anat2std_xfm``, ``std_{gm,wm,csf}_probseg``).
    """
    from scipy import ndimage

    from pipeline.antsio import write_affine
    from pipeline.data.templates import load_template
    from pipeline.io import save_image

    tpl = load_template(2)
    record = json.loads((_truth_dir(bids_dir, subject) / f"{subject}_groundtruth.json").read_text())
    pose = np.asarray(record["pose"]["template_to_scanner"])
    t1w_path = Path(bids_dir) / subject / "anat" / f"{subject}_T1w.nii.gz"
    t1w = nib.load(t1w_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vox = np.linalg.inv(tpl.mask.affine) @ np.linalg.inv(pose) @ t1w.affine
    mask = ndimage.affine_transform(
        tpl.mask.get_fdata(), vox[:3, :3], vox[:3, 3], output_shape=t1w.shape, order=1
    )
    paths = {
        "t1w_preproc": t1w_path,
        "t1w_mask": save_image(
            nib.Nifti1Image((mask > 0.5).astype(np.uint8), t1w.affine), out_dir / "mask.nii.gz"
        ),
        "std_mask": save_image(tpl.mask, out_dir / "std_mask.nii.gz"),
        "anat2std_xfm": write_affine(pose, out_dir / "template_to_t1w.mat"),
    }
    for key in ("gm", "wm", "csf"):
        paths[f"std_{key}_probseg"] = save_image(getattr(tpl, key), out_dir / f"std_{key}.nii.gz")
    return paths


def truth_record(bids_dir: Path, subject: str) -> dict:
    """The subject's ``groundtruth.json`` record."""
    return json.loads((_truth_dir(bids_dir, subject) / f"{subject}_groundtruth.json").read_text())


def truth_network_correlation(bids_dir: Path, subject: str) -> np.ndarray:
    """The planted correlation between the network regions for this subject's diagnosis."""
    from pipeline.data.demo import network_correlation

    return network_correlation(truth_record(bids_dir, subject).get("diagnosis", "TDC"))


def truth_motion(bids_dir: Path, subject: str, task: str = "rest") -> np.ndarray:
    """The true head motion of the subject's run: ``(T, 6)`` parameters as in
    :data:`pipeline.func.motion.MOTION_COLUMNS` (the demo's ``desc-motion_timeseries.tsv``),
    about the centre of the BOLD grid (:func:`truth_motion_centre`)."""
    path = _truth_dir(bids_dir, subject) / f"{subject}_task-{task}_desc-motion_timeseries.tsv"
    return pd.read_csv(path, sep="\t").to_numpy()


def truth_motion_centre(bids_dir: Path, subject: str) -> np.ndarray:
    """Rotation centre (mm) of :func:`truth_motion`'s parameters (the scanner origin in datasets
    written before it was recorded)."""
    bold = truth_record(bids_dir, subject).get("bold", {})
    return np.asarray(bold.get("motion_centre_mm", (0.0, 0.0, 0.0)), dtype=float)


def truth_motion_matrices(
    bids_dir: Path, subject: str, task: str = "rest", start: int = 0
) -> np.ndarray:
    """True head motion as ``(T, 4, 4)`` RAS maps relative to volume ``start``: the map
    :math:`M_t M_{start}^{-1}` from the head's position at ``start`` to its position at ``t`` —
    what :func:`pipeline.func.motion.estimate_motion` estimates when ``start`` is its reference."""
    from pipeline.func.motion import params_to_matrix

    centre = truth_motion_centre(bids_dir, subject)
    mats = np.array([params_to_matrix(r, centre) for r in truth_motion(bids_dir, subject, task)])
    return mats[start:] @ np.linalg.inv(mats[start])


def truth_coregistration(
    bids_dir: Path, subject: str, points_mm: np.ndarray, start: int, task: str = "rest"
) -> tuple[np.ndarray, np.ndarray]:
    """The true T1w → BOLD-reference map and the true EPI shift of T1w brain points.

    The head moved by :math:`B` between the T1w and BOLD volume 0 (``t1w_to_bold_volume0``) and
    by :math:`M_{start}` until volume ``start``, the one the BOLD reference is aligned to (the
    first steady-state one), so the true rigid map is :math:`M_{start} B`. A point's image in the distorted EPI is further shifted along the
    phase-encoding axis by ``sign × field × TotalReadoutTime`` voxels, with the field map (Hz,
    template space) taken at the point's template position :math:`\\varphi(P^{-1} q)`.

    Parameters
    ----------
    bids_dir, subject
        A demo dataset and one of its subjects.
    points_mm : ndarray of shape (N, 3)
        T1w (scanner) points, e.g. :func:`pipeline.func.coreg_eval.brain_points` of the mask.
    start : int
        Index of the volume the BOLD reference is aligned to.

    Returns
    -------
    matrix : ndarray of shape (4, 4)
        True rigid T1w → BOLD-reference point map.
    shift_mm : ndarray of shape (N, 3)
        True EPI displacement of each point's image (world mm; zeros without EPI effects).
    """
    from pipeline.data.demo import (
        coarse_grid,
        displacement_from_velocity,
        trilinear,
        warp_points,
        world_to_voxel,
    )
    from pipeline.data.epi import PhaseEncoding
    from pipeline.data.templates import load_template

    record = truth_record(bids_dir, subject)
    bold = record.get("bold", {})
    between = np.asarray(bold.get("t1w_to_bold_volume0", np.eye(4)), dtype=float)
    matrix = truth_motion_matrices(bids_dir, subject, task)[start] @ between
    shift = np.zeros_like(np.asarray(points_mm, dtype=float))
    if not bold.get("epi_effects") or not bold.get("total_readout_time"):
        return matrix, shift
    tdir = _truth_dir(bids_dir, subject)
    tpl = load_template(2)
    pose = np.asarray(record["pose"]["template_to_scanner"])
    to_template = np.linalg.inv(pose)
    x = (np.asarray(points_mm) @ to_template[:3, :3].T + to_template[:3, 3]).T  # (3, N)
    velocity = nib.load(tdir / record["anatomy"]["velocity_field"])
    warped = warp_points(x, displacement_from_velocity(velocity, coarse_grid(tpl.t1w, 2)))
    field_img = nib.load(tdir / bold["fieldmap"])
    field = trilinear(
        np.asarray(field_img.dataobj, dtype=np.float64)[None],
        world_to_voxel(warped, field_img.affine),
    )[0]
    pe = PhaseEncoding.from_bids(bold["phase_encoding_direction"], bold["total_readout_time"])
    bold_img = nib.load(Path(bids_dir) / subject / "func" / f"{subject}_task-{task}_bold.nii.gz")
    axis_mm = bold_img.affine[:3, pe.axis]
    shift = pe.shift_voxels(field)[:, None] * axis_mm[None, :]
    return matrix, shift
