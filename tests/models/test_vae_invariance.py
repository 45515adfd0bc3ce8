"""VAE invariance beyond the construction (issue 15 item 6): μ under arbitrary SO(3) rotations
(the harness) and under real head poses against the un-posed ground truth."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.models.training import seed_everything
from pipeline.models.vae_report import GAIN_NOTE, mu_pose_invariance, mu_so3_invariance
from pipeline.symmetry import axis_angle_matrix, smooth_volumes

SIDE = 17
STEERABLE = {"widths": ("2x0e + 1x1e", "4x0e + 1x1e", "4x0e"), "head_width": 8}


def _vae(encoder: str) -> torch.nn.Module:
    seed_everything(0)
    extra = {"encoder_hparams": STEERABLE} if encoder == "steerable" else {}
    return build_model("vae", 1, 3, shape=(SIDE,) * 3, widths=(2, 4, 4), encoder=encoder, **extra)


def test_so3_harness_on_mu_separates_the_steerable_encoder_from_the_plain_one():
    x = smooth_volumes(3, (SIDE,) * 3, seed=3, dtype=torch.float32)
    res = {e: mu_so3_invariance(_vae(e).eval(), x, n_rotations=2) for e in ("cnn", "steerable")}
    for r in res.values():
        for key in ("subjects", "band_limited"):
            assert np.isfinite([r[key]["error"], r[key]["floor"], r[key]["spread"]]).all()
            assert r[key]["floor"] < r[key]["error"]
    assert res["steerable"]["band_limited"]["error"] < 0.5 * res["cnn"]["band_limited"]["error"]
    assert mu_so3_invariance(_vae("cnn").eval(), x[:1])["reason"].startswith("needs at least two")


def _write(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)


def test_pose_invariance_is_zero_for_a_perfect_registration_and_not_for_the_native_pose(tmp_path):
    bids, deriv = tmp_path / "bids", tmp_path / "out"
    pattern = "sub-{label}/anat/sub-{label}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(SIDE - 1)  # grid centred on the origin
    vols = smooth_volumes(3, (SIDE,) * 3, seed=5, dtype=torch.float64).numpy()[:, 0]
    pose = np.eye(4)
    pose[:3, :3] = axis_angle_matrix(np.array([1.0, 2.0, 0.5]), np.deg2rad(40))
    for i, v in enumerate(vols):
        sub = f"sub-{i:02d}"
        v = np.abs(v)  # intensities are positive
        truth = bids / "sourcedata" / "groundtruth" / sub
        _write(truth / f"{sub}_space-MNI152NLin2009aSym_desc-unposed_T1w.nii.gz", v, affine)
        _write(deriv / pattern.format(label=f"{i:02d}"), v, affine)  # a perfect registration
        _write(bids / sub / "anat" / f"{sub}_T1w.nii.gz", v, pose @ affine)  # head rotated 40°
    model = _vae("cnn").eval()
    res = mu_pose_invariance(model, bids, deriv, ["00", "01", "02", "99"], pattern, levels=2)
    assert res["n_subjects"] == 3  # sub-99 has no ground truth: skipped
    assert res["registered"]["max"] < 1e-6 and res["registered"]["spread_units"] < 1e-6
    assert res["native"]["mean"] > 1e-3 and res["native"]["spread_units"] > 1e-3
    empty = mu_pose_invariance(model, tmp_path / "none", deriv, ["00"], pattern, levels=2)
    assert empty["n_subjects"] == 0 and "no subject" in empty["reason"]


def test_gain_note_says_exact_by_construction():
    assert "exact by construction" in GAIN_NOTE and "z-scores" in GAIN_NOTE


def test_vae_loss_target_scores_against_the_clean_volume():
    model = _vae("cnn").eval()
    x = smooth_volumes(2, (SIDE,) * 3, seed=1, dtype=torch.float32)
    noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        xhat = model.decode(model.encode(noisy)[0])
        expected = (xhat - x).pow(2).flatten(1).mean(1).mean()
        assert float(model.loss(noisy, target=x)["recon"]) == pytest.approx(
            float(expected), rel=1e-5
        )
        assert float(model.loss(noisy)["recon"]) != pytest.approx(float(expected), rel=1e-3)
