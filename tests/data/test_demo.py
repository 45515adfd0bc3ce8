"""The demo generator: valid BIDS, and ground truth consistent with the images."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.bids import check_bids_dir, invalid_bids_files
from pipeline.data.demo import (
    DemoSpec,
    coarse_grid,
    displacement_from_velocity,
    make_demo_dataset,
    motion_matrix,
    stored_grid,
    trilinear,
    velocity_field,
    voxel_world_coords,
    world_to_voxel,
)
from pipeline.data.groundtruth import truth_motion_centre
from pipeline.data.templates import load_template
from pipeline.symmetry import BiasField


def _truth(root, sub):
    return json.loads(
        (root / "sourcedata/groundtruth" / sub / f"{sub}_groundtruth.json").read_text()
    )


def _resample(img, points_mm):
    data = np.asarray(img.dataobj, dtype=np.float32)
    return trilinear(data[None], world_to_voxel(points_mm, img.affine))[0]


def test_dataset_is_valid_bids(tiny_bids):
    assert invalid_bids_files(tiny_bids) == []
    layout = check_bids_dir(tiny_bids)
    assert layout.get_subjects() == ["01", "02"]
    table = pd.read_csv(tiny_bids / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "site", "age", "sex", "diagnosis"]
    assert table.site.nunique() == 2
    assert set(table.diagnosis) <= {"ASD", "TDC"}


def test_bold_sidecar_has_timing(tiny_bids, tiny_spec):
    sidecar = json.loads((tiny_bids / "sub-01/func/sub-01_task-rest_bold.json").read_text())
    bold = nib.load(tiny_bids / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert sidecar["RepetitionTime"] == pytest.approx(bold.header.get_zooms()[3])
    assert len(sidecar["SliceTiming"]) == bold.shape[2]
    assert (
        min(sidecar["SliceTiming"]) >= 0 and max(sidecar["SliceTiming"]) < sidecar["RepetitionTime"]
    )
    assert bold.shape[3] == tiny_spec["n_volumes"]


def test_sites_store_different_orientations(tiny_bids):
    codes = {
        nib.aff2axcodes(nib.load(tiny_bids / f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz").affine)
        for i in (1, 2)
    }
    assert codes == {("R", "A", "S"), ("L", "P", "S")}


@pytest.mark.parametrize("sub", ["sub-01", "sub-02"])
def test_recorded_pose_maps_posed_t1w_back_onto_unposed(tiny_bids, sub):
    truth = _truth(tiny_bids, sub)
    posed = nib.load(tiny_bids / sub / "anat" / f"{sub}_T1w.nii.gz")
    unposed = nib.load(
        tiny_bids
        / "sourcedata/groundtruth"
        / sub
        / f"{sub}_space-MNI152NLin2009aSym_desc-unposed_T1w.nii.gz"
    )
    ref = unposed.get_fdata()
    inside = load_template(2).mask.get_fdata() > 0
    grid = voxel_world_coords(unposed.shape, unposed.affine)
    pose = np.asarray(truth["pose"]["template_to_scanner"])
    scanner = np.einsum("ij,j...->i...", pose[:3, :3], grid) + pose[:3, 3, None, None, None]
    bias = BiasField(tuple(truth["gauge"]["bias_coefficients"]))
    back = _resample(posed, scanner) / bias.field_at(scanner)
    r_true = np.corrcoef(back[inside], ref[inside])[0, 1]
    r_identity = np.corrcoef(_resample(posed, grid)[inside], ref[inside])[0, 1]
    assert r_true > 0.9  # 4 mm, Rician noise: not 1
    assert r_identity < r_true - 0.2
    # the pose is a proper rotation
    rot = np.asarray(truth["pose"]["rotation_matrix"])
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-8)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_recorded_motion_explains_bold_volumes(tiny_bids):
    sub = "sub-01"
    truth_dir = tiny_bids / "sourcedata/groundtruth" / sub
    motion = pd.read_csv(truth_dir / f"{sub}_task-rest_desc-motion_timeseries.tsv", sep="\t")
    bold = nib.load(tiny_bids / sub / "func" / f"{sub}_task-rest_bold.nii.gz")
    data = np.asarray(bold.dataobj, dtype=np.float32)
    centre = truth_motion_centre(tiny_bids, sub)
    grid = voxel_world_coords(data.shape[:3], bold.affine)
    ref = data[..., 2]
    mask = ref > np.percentile(ref, 60)
    rels = [
        motion_matrix(motion.iloc[t], centre) @ np.linalg.inv(motion_matrix(motion.iloc[2], centre))
        for t in range(data.shape[3])
    ]
    # the volume that moved most: resampled through its recorded motion it lines up with the
    # first steady volume better than through the opposite motion (same interpolation blur)
    last = int(np.argmax([np.abs(r - np.eye(4)).sum() for r in rels]))

    def error(matrix):
        moved = np.einsum("ij,j...->i...", matrix[:3, :3], grid) + matrix[:3, 3, None, None, None]
        corrected = trilinear(data[None, ..., last], world_to_voxel(moved, bold.affine))[0]
        return np.abs(corrected - ref)[mask].mean()

    assert motion.shape == (data.shape[3], 6)
    assert error(rels[last]) < 0.95 * error(np.linalg.inv(rels[last]))
    # non-steady-state volumes are brighter
    assert data[..., 0][mask].mean() > 1.2 * ref[mask].mean()


def test_anatomical_warp_is_invertible(rng):
    template = load_template(2)
    grid = coarse_grid(template.t1w, 4)
    velocity = velocity_field(rng, template, amplitude_mm=3.0)
    forward = displacement_from_velocity(velocity, grid, sign=1.0)
    backward = displacement_from_velocity(velocity, grid, sign=-1.0)
    world = voxel_world_coords(grid.shape, grid.affine)
    moved = world + forward.field
    composed = moved + trilinear(backward.field, world_to_voxel(moved, grid.affine), fill="border")
    inner = (slice(2, -2),) * 3
    err = np.linalg.norm(composed - world, axis=0)[inner]
    assert np.abs(forward.field).max() > 1.0  # a real deformation
    assert np.median(err) < 0.1 and err.max() < 1.0


def test_stored_grid_keeps_world_positions():
    fov, vox = np.array([60.0, 80.0, 40.0]), np.array([2.0, 2.0, 4.0])
    ras_shape, ras_aff = stored_grid(fov, vox, ("R", "A", "S"))
    for codes in [("L", "P", "S"), ("A", "S", "R")]:
        shape, aff = stored_grid(fov, vox, codes)
        assert nib.aff2axcodes(aff) == codes
        canonical = nib.as_closest_canonical(nib.Nifti1Image(np.zeros(shape, np.float32), aff))
        assert canonical.shape == ras_shape
        np.testing.assert_allclose(canonical.affine, ras_aff)


def test_same_seed_gives_identical_files(tmp_path, tiny_bids, tiny_spec):
    spec = DemoSpec(**{**tiny_spec, "sites": 1, "subjects_per_site": 2})
    make_demo_dataset(tmp_path / "again", spec, progress=False, n_jobs=2)  # parallel: same files

    def digest(root, rel):
        return hashlib.sha256((root / rel).read_bytes()).hexdigest()

    for rel in [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/func/sub-01_task-rest_bold.nii.gz",
        "sourcedata/groundtruth/sub-01/sub-01_groundtruth.json",
    ]:
        assert digest(tmp_path / "again", rel) == digest(tiny_bids, rel)


def test_planted_connectivity_effect_of_diagnosis():
    """ASD subjects' default-mode regions are less correlated: the sample FC of long planted
    signals recovers the recorded effect, and the motor network is unchanged."""
    from pipeline.data.demo import DIAGNOSIS_FC_EFFECT, NETWORK_REGIONS, network_signals

    times = np.arange(3000) * 2.0
    nets = NETWORK_REGIONS["network"].to_numpy()
    dmn = np.flatnonzero(nets == "DMN")
    iu = np.triu_indices(len(dmn), 1)
    fc = {}
    for diagnosis in ("TDC", "ASD"):
        sig = network_signals(np.random.default_rng(4), times, 2.0, diagnosis)
        corr = np.corrcoef(sig.T)
        fc[diagnosis] = (corr[np.ix_(dmn, dmn)][iu].mean(), corr[4, 5])
    assert fc["TDC"][0] == pytest.approx(0.6, abs=0.06)
    assert fc["ASD"][0] == pytest.approx(0.6 * (1 - DIAGNOSIS_FC_EFFECT), abs=0.06)
    assert fc["ASD"][1] == pytest.approx(fc["TDC"][1], abs=0.08)
