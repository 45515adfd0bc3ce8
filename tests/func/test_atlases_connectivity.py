"""Offline atlases, ROI time series (parity with nilearn maskers), connectivity and Fisher z."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputError
from pipeline.func.atlases import (
    COORDINATE_ATLASES,
    load_coordinate_atlas,
    load_coordinate_file,
    load_label_atlas,
    roi_timeseries,
)
from pipeline.func.connectivity import connectivity, fisher_z, group_connectivity


@pytest.fixture(scope="module")
def small_bold():
    rng = np.random.default_rng(2)
    shape = (20, 24, 20)
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = [-60, -80, -50]
    data = rng.normal(size=(*shape, 30)).astype(np.float32) + 100
    mask = np.zeros(shape, np.uint8)
    mask[3:17, 3:21, 3:17] = 1
    return nib.Nifti1Image(data, affine), nib.Nifti1Image(mask, affine)


@pytest.mark.parametrize(
    ("name", "size"), [("power2011", 264), ("dosenbach2010", 160), ("seitzman2018", 300)]
)
def test_builtin_coordinate_atlases_offline(name, size):
    atlas = load_coordinate_atlas(name)
    assert atlas.coords.shape == (size, 3) and len(atlas.names) == size
    assert atlas.label == COORDINATE_ATLASES[name][0]


def test_spheres_match_nilearn(small_bold):
    from nilearn.maskers import NiftiSpheresMasker

    bold, mask = small_bold
    atlas = load_coordinate_atlas("dosenbach2010")
    ours = roi_timeseries(bold, atlas, mask, radius_mm=8.0).to_numpy()
    ok = np.isfinite(ours).all(axis=0)
    assert 0 < ok.sum() < ok.size  # some spheres fall outside the small mask
    ref = NiftiSpheresMasker(
        [tuple(c) for c in atlas.coords[ok]], radius=8.0, mask_img=mask, allow_overlap=True
    ).fit_transform(bold)
    np.testing.assert_allclose(ours[:, ok], ref, rtol=1e-5)


def test_label_and_coordinate_file_atlases(small_bold, tmp_path):
    bold, mask = small_bold
    labels = np.zeros(mask.shape, np.int16)
    labels[4:8, 4:8, 4:8] = 3
    labels[10:14, 10:14, 10:14] = 7
    nib.save(nib.Nifti1Image(labels, mask.affine), tmp_path / "lab.nii.gz")
    atlas = load_label_atlas("Toy", tmp_path / "lab.nii.gz")
    table = roi_timeseries(bold, atlas, mask)
    assert list(table.columns) == ["label3", "label7"]
    data = bold.get_fdata()
    np.testing.assert_allclose(table["label7"], data[labels == 7].mean(axis=0), rtol=1e-5)
    pd.DataFrame({"x": [0.0], "y": [-20.0], "z": [10.0], "region": ["A"]}).to_csv(
        tmp_path / "c.tsv", sep="\t", index=False
    )
    assert load_coordinate_file("Mine", tmp_path / "c.tsv").names == ("A",)
    pd.DataFrame({"x": [0.0]}).to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="needs columns x, y, z"):
        load_coordinate_file("Bad", tmp_path / "bad.tsv")


def test_connectivity_parity_and_fisher_z(rng):
    from nilearn.connectome import ConnectivityMeasure

    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 1.0]])
    ts = rng.multivariate_normal(np.zeros(3), cov, size=400)
    ts = np.column_stack([ts, np.full(400, np.nan)])  # a missing ROI
    z = connectivity(ts, "correlation")
    r = ConnectivityMeasure(kind="correlation", standardize="zscore_sample").fit_transform(
        [ts[:, :3]]
    )[0]
    np.testing.assert_allclose(z[:3, :3], fisher_z(r), atol=1e-12)
    assert np.all(np.isnan(z[3])) and np.all(np.diag(z)[:3] == 0)
    assert np.tanh(z[0, 1]) == pytest.approx(0.6, abs=0.08)
    partial = connectivity(ts, "partial correlation", z=False)
    assert abs(partial[0, 2]) < abs(partial[0, 1])
    with pytest.raises(ValueError, match="tangent needs a group"):
        connectivity(ts, "tangent")
    tangent = group_connectivity([ts[:, :3], ts[::-1, :3] * 2], "tangent")
    assert tangent.shape == (2, 3, 3) and np.isfinite(tangent).all()
