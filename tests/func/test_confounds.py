"""Confounds: fMRIPrep column names, lengths, FD/DVARS formulas, CompCor, spikes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.func.confounds import (
    acompcor,
    compute_confounds,
    compute_dvars,
    cosine_basis,
    framewise_displacement,
    write_confounds_tsv,
)
from pipeline.func.motion import MOTION_COLUMNS


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
        voxels, params, 2.0, wm=wm, csf=csf, n_nonsteady=2, dvars_threshold=100.0
    )
    assert len(table) == voxels.shape[1]
    expected = {
        "global_signal",
        "csf",
        "white_matter",
        "dvars",
        "std_dvars",
        "framewise_displacement",
    }
    for c in MOTION_COLUMNS:
        expected |= {c, f"{c}_derivative1", f"{c}_power2", f"{c}_derivative1_power2"}
    expected |= {f"a_comp_cor_{j:02d}" for j in range(5)}
    expected |= {"non_steady_state_outlier_00", "non_steady_state_outlier_01"}
    expected |= {f"cosine_{j:02d}" for j in range(3)}  # 300 s run, 128 s cut-off: K = 4
    assert expected <= set(table.columns)
    assert "cosine_03" not in table.columns
    assert table["motion_outlier_00"].to_numpy().nonzero()[0].tolist() == [70]
    assert table["non_steady_state_outlier_01"].to_numpy().nonzero()[0].tolist() == [1]
    for col in ("framewise_displacement", "dvars", "trans_x_derivative1"):
        assert np.isnan(table[col].iloc[0]) and table[col].iloc[1:].notna().all()
    assert meta["NumberOfMotionOutliers"] == 1
    tsv = write_confounds_tsv(table)
    assert tsv.splitlines()[1].split("\t")[3] == "n/a"  # dvars of volume 0
    assert len(tsv.splitlines()) == len(table) + 1


def test_fd_formula(run):
    _, params, *_ = run
    fd = framewise_displacement(params)
    p = params.to_numpy()
    t = 10
    hand = np.abs(p[t] - p[t - 1])[:3].sum() + 50 * np.abs(p[t] - p[t - 1])[3:].sum()
    assert fd[t] == pytest.approx(hand)


def test_dvars_standardised_near_one_for_white_noise(rng):
    voxels = 1000 + rng.normal(0, 10, size=(2000, 100))
    dvars, std = compute_dvars(voxels)
    assert np.nanmedian(std) == pytest.approx(1.0, abs=0.05)
    assert np.nanmedian(dvars) == pytest.approx(10 * np.sqrt(2), rel=0.05)


def test_acompcor_finds_planted_signal(run):
    voxels, _, wm, csf, nuisance = run
    comps, var = acompcor(voxels[wm | csf], 3)
    assert abs(np.corrcoef(comps[:, 0], nuisance)[0, 1]) > 0.95
    assert var[0] > var[1] >= var[2]


def test_cosine_basis_orthonormal():
    basis = cosine_basis(200, 2.0, 128.0)
    assert basis.shape == (200, int(np.floor(2 * 200 * 2.0 / 128)) - 1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    np.testing.assert_allclose(basis.sum(axis=0), 0, atol=1e-10)
