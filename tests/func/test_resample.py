"""One-shot resampling composes motion, coregistration and T1w→template exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.anat._antsio import write_affine
from pipeline.func.motion import params_to_matrix
from pipeline.func.resample import grid_points, map_points, one_shot_resample, template_grid


def _field(p):
    """A linear function of world position: trilinear interpolation reproduces it exactly."""
    return 100 + 0.5 * p[..., 0] - 0.3 * p[..., 1] + 0.2 * p[..., 2]


def test_template_grid():
    from pipeline.data.templates import load_template

    grid = template_grid(3.0)
    tpl = load_template(2).t1w
    assert np.allclose(np.abs(np.diag(grid.affine)[:3]), 3.0)
    np.testing.assert_allclose(grid.affine[:3, 3], tpl.affine[:3, 3])  # same first voxel
    extent, tpl_extent = (np.array(grid.shape) - 1) * 3.0, (np.array(tpl.shape[:3]) - 1) * 2.0
    assert np.all(extent <= tpl_extent) and np.all(extent > tpl_extent - 3.0)


def test_map_points_matches_matrix(tmp_path, rng):
    m = params_to_matrix([5, -3, 2, 0.1, -0.2, 0.05])
    write_affine(m, tmp_path / "a.mat")
    pts = rng.normal(0, 40, size=(100, 3))
    np.testing.assert_allclose(
        map_points(pts, [tmp_path / "a.mat"]), pts @ m[:3, :3].T + m[:3, 3], atol=1e-3
    )


def test_one_shot_resampling_composes_transforms(tmp_path):
    # BOLD: 4 volumes of a head moving rigidly; value at reference point p is f(p)
    shape, n_vol = (30, 34, 28), 4
    affine = np.diag([5.0, 5.0, 5.0, 1.0])
    affine[:3, 3] = -np.array(shape) * 2.5 + [4.0, -2.0, 3.0]
    motion = np.array(
        [params_to_matrix([0.5 * t, -0.3 * t, 0.2, 0.01 * t, 0.0, -0.01]) for t in range(n_vol)]
    )
    world = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    data = np.empty((*shape, n_vol), np.float32)
    for t in range(n_vol):  # V_t(q) = f(M_t^-1 q)
        inv = np.linalg.inv(motion[t])
        data[..., t] = _field(world @ inv[:3, :3].T + inv[:3, 3]).reshape(shape)
    bold = nib.Nifti1Image(data, affine)
    coreg = params_to_matrix([2.0, 1.0, -1.5, 0.02, 0.01, 0.0])  # T1w -> boldref
    anat = params_to_matrix([-3.0, 4.0, 1.0, 0.0, 0.05, 0.02])  # template -> T1w
    write_affine(anat, tmp_path / "anat.mat")
    grid = template_grid(6.0)
    select = np.zeros(grid.shape, bool)
    select[8:22, 10:26, 8:20] = True
    out, coverage = one_shot_resample(
        bold,
        grid,
        motion=motion,
        coreg=coreg,
        anat_to_template=[tmp_path / "anat.mat"],
        mask=select,
    )
    x = grid_points(grid, select)
    expected = _field(x @ (coreg @ anat)[:3, :3].T + (coreg @ anat)[:3, 3])
    got = out.get_fdata()[select]
    inside = coverage[select]
    assert inside.mean() > 0.9
    for t in range(n_vol):
        np.testing.assert_allclose(got[inside, t], expected[inside], atol=2e-3)
    assert out.shape == (*grid.shape, n_vol) and not coverage[~select].any()
    with pytest.raises(ValueError, match="motion has shape"):
        one_shot_resample(bold, grid, motion=motion[:2], coreg=coreg, anat_to_template=[])
