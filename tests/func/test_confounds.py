"""Confounds: fMRIPrep 25's column names and meaning, checked against Nipype and read by nilearn."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.func.confounds import (
    compcor,
    compute_confounds,
    compute_dvars,
    cosine_basis,
    framewise_displacement,
    rmsd,
    tcompcor_mask,
    write_confounds_tsv,
)
from pipeline.func.motion import MOTION_COLUMNS, params_to_matrix

TR = 2.0


@pytest.fixture
def run(rng):
    n_t, n_v = 150, 400
    params = pd.DataFrame(
        np.cumsum(rng.normal(0, [0.02] * 3 + [0.0003] * 3, size=(n_t, 6)), axis=0),
        columns=list(MOTION_COLUMNS),
    )
    params.iloc[70:, 0] += 0.8  # a jerk: FD > 0.5 at volume 70
    nuisance = rng.normal(size=n_t)
    voxels = 1000 + rng.normal(0, 5, size=(n_v, n_t))
    wm = np.zeros(n_v, bool)
    wm[:100] = True
    csf = np.zeros(n_v, bool)
    csf[100:150] = True
    voxels[wm | csf] += 20 * nuisance  # a physiological signal in WM/CSF
    return voxels, params, wm, csf, nuisance


def test_columns_and_lengths(run):
    voxels, params, wm, csf, _ = run
    table, meta = compute_confounds(
        voxels, params, TR, wm=wm, csf=csf, n_nonsteady=2, dvars_threshold=100.0
    )
    assert len(table) == voxels.shape[1]
    expected = {"dvars", "std_dvars", "framewise_displacement", "rmsd", "csf_wm", "tcompcor"}
    for c in (*MOTION_COLUMNS, "csf", "white_matter", "global_signal"):
        expected |= {c, f"{c}_derivative1", f"{c}_power2", f"{c}_derivative1_power2"}
    expected |= {"non_steady_state_outlier_00", "non_steady_state_outlier_01"}
    expected |= {f"cosine_{j:02d}" for j in range(3)}  # 300 s run, 128 s cut-off: K = 4
    expected |= {f"{k}_comp_cor_00" for k in "tcwa"}
    assert expected <= set(table.columns)
    assert "cosine_03" not in table.columns
    assert table["motion_outlier_00"].to_numpy().nonzero()[0].tolist() == [70]
    assert table["non_steady_state_outlier_01"].to_numpy().nonzero()[0].tolist() == [1]
    for col in ("framewise_displacement", "dvars", "rmsd", "csf_derivative1"):
        assert np.isnan(table[col].iloc[0]) and table[col].iloc[1:].notna().all()
    np.testing.assert_allclose(table["csf_power2"], table["csf"] ** 2)
    np.testing.assert_allclose(
        table["global_signal_derivative1_power2"].iloc[1:],
        np.diff(table["global_signal"]) ** 2,
    )
    assert meta["NumberOfMotionOutliers"] == 1
    # CompCor: zero on the non-steady volumes, 50% of the variance, fMRIPrep's metadata
    for kind, (method, mask) in {
        "a": ("aCompCor", "combined"),
        "c": ("aCompCor", "CSF"),
        "w": ("aCompCor", "WM"),
        "t": ("tCompCor", None),
    }.items():
        names = [c for c in table.columns if c.startswith(f"{kind}_comp_cor_")]
        assert names == [f"{kind}_comp_cor_{j:02d}" for j in range(len(names))]
        assert (table[names].iloc[:2] == 0).all().all()
        entries = [meta[n] for n in names]
        assert all(e["Method"] == method and e["Retained"] is True for e in entries)
        assert all(e.get("Mask") == mask for e in entries)
        cumulative = [e["CumulativeVarianceExplained"] for e in entries]
        assert cumulative[-1] >= 0.5 and (len(cumulative) == 1 or cumulative[-2] < 0.5)
        assert set(entries[0]) >= {"SingularValue", "VarianceExplained"}
    tsv = write_confounds_tsv(table)
    header = tsv.splitlines()[0].split("\t")
    assert tsv.splitlines()[1].split("\t")[header.index("dvars")] == "n/a"
    assert len(tsv.splitlines()) == len(table) + 1


def test_fd_formula(run):
    _, params, *_ = run
    fd = framewise_displacement(params)
    p = params.to_numpy()
    t = 10
    hand = np.abs(p[t] - p[t - 1])[:3].sum() + 50 * np.abs(p[t] - p[t - 1])[3:].sum()
    assert fd[t] == pytest.approx(hand)


def test_rmsd_is_the_rms_displacement_of_a_sphere(rng):
    """Jenkinson's closed form equals the RMS displacement of points uniform in the 80 mm ball."""
    params = pd.DataFrame(
        [
            [0, 0, 0, 0, 0, 0],
            [1.0, -0.5, 0.3, 0.02, -0.03, 0.01],
            [1.2, -0.4, 0.1, 0.0, 0.01, 0.05],
        ],
        columns=list(MOTION_COLUMNS),
    )
    center = np.array([5.0, -10.0, 20.0])
    got = rmsd(params, center)
    assert np.isnan(got[0])
    n = 400_000
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    points = center + 80.0 * direction * rng.uniform(size=(n, 1)) ** (1 / 3)
    homog = np.column_stack([points, np.ones(n)])
    mats = [params_to_matrix(row) for row in params.to_numpy()]
    for t in (1, 2):
        moved = homog @ (mats[t] @ np.linalg.inv(mats[t - 1])).T
        mc = np.sqrt(np.mean(np.sum((moved[:, :3] - points) ** 2, axis=1)))
        assert got[t] == pytest.approx(mc, rel=5e-3)
    # a pure translation moves every point by its length
    shift = pd.DataFrame([[0] * 6, [3.0, 4.0, 0, 0, 0, 0]], columns=list(MOTION_COLUMNS))
    assert rmsd(shift)[1] == pytest.approx(5.0)


def test_dvars_standardised_near_one_for_white_noise(rng):
    voxels = 1000 + rng.normal(0, 10, size=(2000, 100))
    dvars, std = compute_dvars(voxels)
    assert np.nanmedian(std) == pytest.approx(1.0, abs=0.05)
    assert np.nanmedian(dvars) == pytest.approx(10 * np.sqrt(2), rel=0.05)


def test_compcor_finds_planted_signal(run):
    voxels, _, wm, csf, nuisance = run
    res = compcor(voxels[wm | csf], TR, criterion=3)
    assert abs(np.corrcoef(res.components[:, 0], nuisance)[0, 1]) > 0.95
    assert res.variance_explained[0] > res.variance_explained[1] >= res.variance_explained[2]
    # the planted signal alone explains more than half of the variance
    assert compcor(voxels[wm | csf], TR).n_retained == 1
    assert compcor(voxels[wm | csf], TR, criterion="all").n_retained == voxels.shape[1]


def test_cosine_basis_orthonormal():
    basis = cosine_basis(200, 2.0, 128.0)
    assert basis.shape == (200, int(np.floor(2 * 200 * 2.0 / 128)) - 1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    np.testing.assert_allclose(basis.sum(axis=0), 0, atol=1e-10)


# --------------------------------------------------------------------------- against Nipype
@pytest.fixture
def image_run(tmp_path, rng):
    """A small 4-D run with a drift, WM/CSF noise, a few bright voxels and two transients."""
    shape, n_t = (8, 8, 6), 80
    t = np.arange(n_t) * TR
    data = 800 + rng.normal(0, 4, size=(*shape, n_t))
    data += 10 * np.sin(2 * np.pi * t / 400)  # slow drift the cosine filter removes
    wm = np.zeros(shape, bool)
    wm[1:4, 1:7, 1:5] = True
    csf = np.zeros(shape, bool)
    csf[5:7, 2:6, 1:5] = True
    resp, card = np.sin(2 * np.pi * 0.3 * t), rng.normal(size=n_t)
    data[wm] += 6 * resp + 2 * rng.normal(size=(wm.sum(), 1)) * card
    data[csf] += 8 * card + 3 * rng.normal(size=(csf.sum(), 1)) * resp
    data[0, 0, 0] += 30 * rng.normal(size=n_t)  # high-variance voxels for tCompCor
    data[7, 7, 5] += 25 * rng.normal(size=n_t)
    data[..., :2] += 200  # non-steady-state volumes
    mask = np.ones(shape, bool)
    mask[0, 7, :] = False
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    paths = {}
    for name, arr in {"bold": data.astype(np.float32), "mask": mask, "wm": wm, "csf": csf}.items():
        img = nib.Nifti1Image(arr.astype(np.float32 if name == "bold" else np.uint8), affine)
        if name == "bold":
            img.header.set_zooms((3.0, 3.0, 3.0, TR))
        paths[name] = tmp_path / f"{name}.nii.gz"
        img.to_filename(paths[name])
    return paths, data, mask, wm, csf


def _sign_aligned(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return ours * np.sign(np.sum(ours * ref, axis=0))


def test_acompcor_matches_nipype(image_run, tmp_path, monkeypatch):
    from nipype.algorithms.confounds import ACompCor

    paths, data, mask, wm, csf = image_run
    monkeypatch.chdir(tmp_path)
    res = ACompCor(
        realigned_file=str(paths["bold"]),
        mask_files=[str(paths["csf"]), str(paths["wm"])],
        mask_names=["CSF", "WM"],
        merge_method="none",
        pre_filter="cosine",
        repetition_time=TR,
        variance_threshold=0.5,
        ignore_initial_volumes=2,
        save_metadata=True,
    ).run()
    theirs = pd.read_csv(res.outputs.components_file, sep="\t")
    meta = pd.read_csv(res.outputs.metadata_file, sep="\t")
    vox, voxwm, voxcsf = data[mask], wm[mask], csf[mask]
    params = pd.DataFrame(np.zeros((data.shape[3], 6)), columns=list(MOTION_COLUMNS))
    table, ours_meta = compute_confounds(vox, params, TR, wm=voxwm, csf=voxcsf, n_nonsteady=2)
    for prefix, mask_name in (("c_comp_cor", "CSF"), ("w_comp_cor", "WM")):
        ref_meta = meta[meta["mask"] == mask_name]
        kept = ref_meta[ref_meta["retained"]]
        ours = [c for c in table.columns if c.startswith(prefix)]
        assert len(ours) == len(kept) >= 1, (prefix, len(ours), len(kept))
        ref = theirs[list(kept["component"])].to_numpy()
        ours_arr = table[ours].to_numpy()
        np.testing.assert_allclose(_sign_aligned(ours_arr, ref), ref, atol=2e-4)
        np.testing.assert_allclose(
            [ours_meta[c]["SingularValue"] for c in ours], kept["singular_value"], rtol=1e-4
        )
        np.testing.assert_allclose(
            [ours_meta[c]["CumulativeVarianceExplained"] for c in ours],
            kept["cumulative_variance_explained"],
            rtol=1e-4,
        )


def test_tcompcor_matches_nipype(image_run, tmp_path, monkeypatch):
    from nipype.algorithms.confounds import TCompCor

    paths, data, mask, *_ = image_run
    monkeypatch.chdir(tmp_path)
    res = TCompCor(
        realigned_file=str(paths["bold"]),
        mask_files=[str(paths["mask"])],
        pre_filter="cosine",
        repetition_time=TR,
        variance_threshold=0.5,
        percentile_threshold=0.02,
        ignore_initial_volumes=2,
        save_metadata=True,
    ).run()
    their_mask = np.asarray(nib.load(res.outputs.high_variance_masks).dataobj).astype(bool)
    ours_mask = tcompcor_mask(data[mask][:, 2:].astype(np.float32))
    np.testing.assert_array_equal(ours_mask, their_mask[mask])
    theirs = pd.read_csv(res.outputs.components_file, sep="\t").to_numpy()
    res_ours = compcor(data[mask][ours_mask][:, 2:], TR)
    assert res_ours.n_retained == theirs.shape[1]
    np.testing.assert_allclose(
        _sign_aligned(res_ours.components, theirs[2:]), theirs[2:], atol=2e-4
    )


def test_dvars_matches_nipype(image_run, tmp_path, monkeypatch):
    pytest.importorskip("nitime")  # Nipype's AR(1) estimate
    from nipype.algorithms.confounds import ComputeDVARS

    paths, data, mask, *_ = image_run
    data = data.copy()
    data[3, 3, 3] = 500.0  # a zero-variance voxel: fMRIPrep removes it
    nib.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(
        paths["bold"]
    )
    monkeypatch.chdir(tmp_path)
    res = ComputeDVARS(
        in_file=str(paths["bold"]),
        in_mask=str(paths["mask"]),
        save_std=True,
        save_nstd=True,
        remove_zerovariance=True,
    ).run()
    std_ref = np.loadtxt(res.outputs.out_std)  # written with 6 decimals
    nstd_ref = np.loadtxt(res.outputs.out_nstd)
    dvars, std = compute_dvars(data[mask].astype(np.float32))
    assert np.isnan(dvars[0]) and np.isnan(std[0])
    # 1e-5: scaling by the mean instead of the median, or keeping the constant voxel, is ~1e-3 off
    np.testing.assert_allclose(dvars[1:], nstd_ref, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(std[1:], std_ref, rtol=1e-5, atol=2e-6)


def test_fd_matches_nipype(run, tmp_path, monkeypatch):
    from nipype.algorithms.confounds import FramewiseDisplacement

    _, params, *_ = run
    monkeypatch.chdir(tmp_path)
    fsl = params[["rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"]].to_numpy()
    np.savetxt(tmp_path / "mc.par", fsl)
    res = FramewiseDisplacement(in_file=str(tmp_path / "mc.par"), parameter_source="FSL").run()
    ref = np.loadtxt(res.outputs.out_file, skiprows=1)
    np.testing.assert_allclose(framewise_displacement(params)[1:], ref, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- read by nilearn
def _fmriprep_reference(tmp_path: Path) -> Path:
    """nilearn's own fMRIPrep (21) confounds files, beside a preproc BOLD of their length."""
    import nilearn.interfaces.fmriprep as fmriprep_iface

    src = Path(fmriprep_iface.__file__).parent / "data"
    out = tmp_path / "fmriprep" / "sub-01" / "func"
    out.mkdir(parents=True)
    stem = "sub-01_task-rest"
    for ext in ("tsv", "json"):
        shutil.copy(
            src / f"test-v21_desc-confounds_timeseries.{ext}",
            out / f"{stem}_desc-confounds_timeseries.{ext}",
        )
    n = len(pd.read_csv(out / f"{stem}_desc-confounds_timeseries.tsv", sep="\t"))
    return _bold(out, stem, n)


def _bold(folder: Path, stem: str, n: int) -> Path:
    path = folder / f"{stem}_space-MNI152NLin2009aSym_res-2_desc-preproc_bold.nii.gz"
    nib.Nifti1Image(np.zeros((2, 2, 2, n), np.float32), np.eye(4)).to_filename(path)
    return path


def _ours(tmp_path: Path, run) -> Path:
    voxels, params, wm, csf, _ = run
    params = params.copy()
    params.iloc[100:, 1] += 1.0  # a second spike, so scrubbing has work to do
    table, meta = compute_confounds(voxels, params, TR, wm=wm, csf=csf, n_nonsteady=2)
    out = tmp_path / "symprep" / "sub-01" / "func"
    out.mkdir(parents=True)
    stem = "sub-01_task-rest"
    (out / f"{stem}_desc-confounds_timeseries.tsv").write_text(write_confounds_tsv(table))
    (out / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    return _bold(out, stem, len(table))


def _kinds(columns) -> set[str]:
    """Column names with the numbered families collapsed (cosine00 / cosine_00 -> cosine_N)."""
    return {re.sub(r"(cosine|comp_cor|outlier)_?\d+$", r"\1_N", c) for c in columns}


@pytest.mark.parametrize(
    ("strategy", "must"),
    [
        ("simple", {"csf", "white_matter", "trans_x_derivative1_power2", "cosine_N"}),
        ("scrubbing", {"csf_derivative1_power2", "white_matter_power2", "rot_z_power2"}),
        ("compcor", {"a_comp_cor_N", "cosine_N", "rot_x_derivative1"}),
    ],
)
def test_nilearn_strategies_select_what_they_select_on_fmriprep(tmp_path, run, strategy, must):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    ref_conf, ref_mask = load_confounds_strategy(str(_fmriprep_reference(tmp_path)), strategy)
    conf, sample_mask = load_confounds_strategy(str(_ours(tmp_path, run)), strategy)
    assert _kinds(conf.columns) == _kinds(ref_conf.columns)
    assert must <= _kinds(conf.columns)
    assert len(conf) == 150 and conf.notna().all().all()
    if strategy == "compcor":
        ours_json = json.loads(next((tmp_path / "symprep").rglob("*.json")).read_text())
        n_a = sum(1 for k in ours_json if k.startswith("a_comp_cor_"))
        assert sum(c.startswith("a_comp_cor_") for c in conf.columns) == n_a >= 1
    # non-steady volumes are left out of the sample mask; scrubbing also drops the spikes
    assert sample_mask is not None and 0 not in sample_mask and 1 not in sample_mask
    if strategy == "scrubbing":
        assert 70 not in sample_mask and 100 not in sample_mask
    else:
        assert 70 in sample_mask


def test_nilearn_load_confounds_reads_every_family(tmp_path, run):
    from nilearn.interfaces.fmriprep import load_confounds

    bold = _ours(tmp_path, run)
    for compcor_mode, kinds in (
        ("temporal_anat_combined", "ta"),
        ("temporal_anat_separated", "tcw"),
    ):
        conf, _ = load_confounds(
            str(bold),
            strategy=("motion", "high_pass", "wm_csf", "global_signal", "compcor"),
            motion="full",
            wm_csf="full",
            global_signal="full",
            compcor=compcor_mode,
        )
        cols = set(conf.columns)
        assert {
            "global_signal_derivative1_power2",
            "csf_power2",
            "white_matter_derivative1",
        } <= cols
        assert {c[0] for c in cols if "_comp_cor_" in c} == set(kinds), compcor_mode
