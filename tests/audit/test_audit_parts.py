"""Invariance audit: transforms of raw images, residual measures, derivative comparison, tables,
figure and group summary (on synthetic outputs; the real rerun is in test_audit_run.py)."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.audit import (
    AuditTransform,
    compare_derivatives,
    connectivity_rmsd,
    dice,
    draw_transforms,
    plot_residuals,
    probability_mad,
    rank_correlation,
    summarize_audits,
    timeseries_correlation,
    transform_bold,
    transform_t1w,
    write_transformed_dataset,
)
from pipeline.symmetry import axis_angle_matrix


def _t1w(rng, shape=(12, 14, 10)) -> nib.Nifti1Image:
    A = np.diag([2.0, 2.0, 2.5, 1.0])
    A[:3, 3] = [-12.0, -14.0, -11.0]
    data = (rng.random(shape) * 100 + 10).astype(np.float32)
    return nib.Nifti1Image(data, A)


def test_draw_transforms_is_reproducible_and_switchable():
    a, b = draw_transforms(3, seed=5), draw_transforms(3, seed=5)
    assert [t.rotation for t in a] == [t.rotation for t in b]
    assert len({t.name for t in a}) == 3
    plain = draw_transforms(2, seed=5, pose=False, gauge=False, orientation=False)
    assert all(t.rotation_deg == 0 and t.gain == 1 and t.orientation is None for t in plain)
    shifted = draw_transforms(4, seed=1, time_shifts=True, n_volumes=12)
    assert all(1 <= t.time_shift < 12 for t in shifted)
    with pytest.raises(ValueError, match="pose_mode must be"):
        draw_transforms(1, pose_mode="warp")


def test_header_pose_moves_world_coordinates_and_keeps_voxels(rng):
    img = _t1w(rng)
    R = axis_angle_matrix([0, 0, 1], 0.5)
    tr = AuditTransform(
        "g", rotation=R.tolist(), translation_mm=[3.0, 0.0, -1.0], orientation="LPS"
    )
    out = transform_t1w(img, tr)
    assert "".join(nib.aff2axcodes(out.affine)) == "LPS"
    # the world position of every voxel's value moves by T(p) = R (p - c) + c + t
    c = img.affine[:3, :3] @ ((np.array(img.shape) - 1) / 2) + img.affine[:3, 3]
    v = np.array([3, 4, 5])
    p = nib.affines.apply_affine(img.affine, v)
    q = R @ (p - c) + c + np.array([3.0, 0.0, -1.0])
    w = np.rint(nib.affines.apply_affine(np.linalg.inv(out.affine), q)).astype(int)
    assert out.get_fdata()[tuple(w)] == pytest.approx(img.get_fdata()[tuple(v)], rel=1e-6)


def test_gauge_is_monotone_without_bias_and_noise(rng):
    img = _t1w(rng)
    tr = AuditTransform("g", gain=1.7, gamma=0.8)
    a, b = img.get_fdata().ravel(), transform_t1w(img, tr).get_fdata().ravel()
    assert rank_correlation(a, b) == pytest.approx(1.0)
    assert not np.allclose(a, b)


def test_resampled_pose_keeps_the_grid(rng):
    img = _t1w(rng)
    tr = AuditTransform(
        "g", rotation=axis_angle_matrix([1, 0, 0], 0.3).tolist(), pose_mode="resample"
    )
    out = transform_t1w(img, tr)
    assert out.shape == img.shape and np.allclose(out.affine, img.affine)


def test_bold_time_shift_and_dataset_copy(tmp_path, rng):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "sub-01" / "func").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    t1 = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    bold = bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    nib.save(_t1w(rng), t1)
    series = rng.random((4, 4, 3, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(series, np.diag([6.0, 6.0, 6.0, 1.0])), bold)
    tr = AuditTransform("g01", time_shift=2, gain=2.0)
    moved = transform_bold(nib.load(bold), tr, nib.load(t1))
    np.testing.assert_allclose(moved.get_fdata()[..., 2:], 2.0 * series[..., :-2], rtol=1e-6)
    out = write_transformed_dataset(bids, "01", t1, [bold], tr, tmp_path / "out")
    assert (out / "sub-01" / "anat" / "sub-01_T1w.nii.gz").is_file()
    assert (out / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz").is_file()
    assert (out / "code" / "audit_transform.json").is_file()


def test_measures_zero_residual_for_identical_and_invariant_changes(rng):
    a = rng.random((8, 8, 8))
    mask = a > 0.3
    assert dice(mask, mask) == 1.0 and dice(mask, ~mask) == 0.0
    assert rank_correlation(a, np.exp(3 * a), mask) == pytest.approx(1.0)  # monotone map
    assert rank_correlation(a, rng.random(a.shape), mask) < 0.2
    assert probability_mad(a, a) == 0.0
    ts = rng.standard_normal((20, 5))
    assert timeseries_correlation(ts, np.roll(ts, 3, axis=0), time_shift=3) == pytest.approx(1.0)
    assert timeseries_correlation(ts, np.roll(ts, 3, axis=0)) < 0.6
    fc = np.corrcoef(ts.T)
    assert connectivity_rmsd(fc, fc) == 0.0 and connectivity_rmsd(fc, np.eye(5)) > 0.1
    with pytest.raises(ValueError, match="differ in shape"):
        dice(mask, mask[1:])


def _derivatives(root, rng, noise=0.0, shift=0):
    anat, func = root / "sub-01" / "anat", root / "sub-01" / "func"
    anat.mkdir(parents=True)
    func.mkdir(parents=True)
    base = np.random.default_rng(0)
    t1 = base.random((9, 9, 9)) + noise * rng.random((9, 9, 9))
    A = np.eye(4)
    std = "sub-01_space-MNI152NLin2009aSym_res-2"
    nib.save(nib.Nifti1Image(t1.astype(np.float32), A), anat / f"{std}_desc-preproc_T1w.nii.gz")
    m = np.zeros((9, 9, 9), np.uint8)
    m[2 : 7 + (noise > 0), 2:7, 2:7] = 1
    nib.save(nib.Nifti1Image(m, A), anat / f"{std}_desc-brain_mask.nii.gz")
    nib.save(
        nib.Nifti1Image((t1 / 2).astype(np.float32), A), anat / f"{std}_label-GM_probseg.nii.gz"
    )
    ts = np.random.default_rng(1).standard_normal((12, 3))
    pd.DataFrame(np.roll(ts, shift, 0), columns=list("abc")).to_csv(
        func / "sub-01_task-rest_space-MNI152NLin2009aSym_atlas-demo_desc-minimal_timeseries.tsv",
        sep="\t",
        index=False,
    )
    fc = np.corrcoef(ts.T) * (1 - noise)
    np.fill_diagonal(fc, 1)
    pd.DataFrame(fc, columns=list("abc")).to_csv(
        func
        / "sub-01_task-rest_space-MNI152NLin2009aSym_atlas-demo_meas-PearsonCorrelation_desc-minimal_relmat.tsv",
        sep="\t",
        index=False,
    )


def test_compare_derivatives_zero_for_equal_outputs_positive_for_changed(tmp_path, rng):
    _derivatives(tmp_path / "ref", rng)
    _derivatives(tmp_path / "same", rng, shift=4)
    _derivatives(tmp_path / "moved", rng, noise=0.5)
    same = compare_derivatives(tmp_path / "ref", tmp_path / "same", "01", time_shift=4)
    assert set(same["measure"]) == {
        "rank_corr",
        "zscore_rmsd",
        "dice",
        "mean_abs_diff",
        "timeseries_corr",
        "fc_rmsd",
    }
    np.testing.assert_allclose(same["residual"], 0.0, atol=1e-9)
    moved = compare_derivatives(tmp_path / "ref", tmp_path / "moved", "01").set_index("measure")
    assert (moved.drop(index="timeseries_corr")["residual"] > 0.01).all()


def test_audit_measures_come_from_the_stage_registry(tmp_path, rng, monkeypatch):
    """Each registered stage's comparison gives the measures its registry entry declares; a
    stage with measures but no comparison, or a comparison with an undeclared measure, is refused."""
    from pipeline.audit import _compare
    from pipeline.workflows.stages import STAGES, Stage

    _derivatives(tmp_path / "ref", rng)
    table = compare_derivatives(tmp_path / "ref", tmp_path / "ref", "01")
    for stage, rows in table.groupby("stage"):
        assert set(rows["measure"]) <= set(STAGES[stage].audit_measures), stage
    assert set(table["stage"]) == {"anat", "func"}
    monkeypatch.setitem(
        _compare.STAGE_COMPARISONS,
        "anat",
        lambda *a: [{"output": "x", "measure": "bogus", "value": 0.0, "residual": 0.0}],
    )
    with pytest.raises(ValueError, match=r"measures \['bogus'\] are not among"):
        compare_derivatives(tmp_path / "ref", tmp_path / "ref", "01")
    dwi = Stage(name="dwi", section="dwi", run=lambda ctx: {}, audit_measures=("fa_rmsd",))
    monkeypatch.setitem(STAGES, "dwi", dwi)
    with pytest.raises(ValueError, match="'dwi' declares audit measures"):
        compare_derivatives(tmp_path / "ref", tmp_path / "ref", "01")


def test_summary_table_and_figure(tmp_path):
    for sub, scale in (("01", 1.0), ("02", 2.0)):
        rows = pd.DataFrame(
            {
                "subject": f"sub-{sub}",
                "transform": ["g01", "g01", "g02", "g02"],
                "output": ["desc-brain_mask", "desc-preproc_T1w"] * 2,
                "measure": ["dice", "rank_corr"] * 2,
                "value": 0.0,
                "residual": np.array([0.01, 0.02, 0.03, 0.04]) * scale,
            }
        )
        dest = tmp_path / f"sub-{sub}" / "audit" / f"sub-{sub}_desc-invariance_residuals.tsv"
        dest.parent.mkdir(parents=True)
        rows.to_csv(dest, sep="\t", index=False)
    summary = summarize_audits(tmp_path).set_index("measure")
    assert summary.loc["dice", "n_subjects"] == 2 and summary.loc["dice", "n_transforms"] == 4
    assert summary.loc["rank_corr", "max"] == pytest.approx(0.08)
    assert (tmp_path / "group" / "audit" / "invariance_summary.tsv").is_file()
    png = plot_residuals(rows, tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert summarize_audits(tmp_path / "nothing").empty


def test_audit_command_parser_and_bad_k(tmp_path):
    from pipeline.commands import audit
    from pipeline.errors import ConfigError

    parser = argparse.ArgumentParser()
    audit.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["audit", "b", "o", "--participant-label", "01", "--n-transforms", "0"]
    )
    assert args.func is audit.run and args.seed is None  # the configuration's audit.seed
    with pytest.raises(ConfigError, match="--n-transforms must be at least 1; got 0"):
        audit.run(args)
