"""Group actions: exact ones compose as a group, header actions leave world content unchanged,
resampled ones move content as they should, and equivariance_error tells invariant from not."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.symmetry import (
    AxisPermutation,
    BiasField,
    Gain,
    HeaderPose,
    MonotoneContrast,
    RicianNoise,
    RigidMotion,
    SetPermutation,
    TimeShift,
    Translation,
    VoxelShift,
    axis_angle_matrix,
    cube_rotations,
    equivariance_error,
    random_rotations,
    reorient_image,
)


def _image(rng, shape=(5, 6, 7)) -> nib.Nifti1Image:
    A = np.eye(4)
    A[:3, :3] = random_rotations(1, seed=1)[0] @ np.diag([1.0, 1.5, 2.0])
    A[:3, 3] = [10.0, -4.0, 3.0]
    return nib.Nifti1Image(rng.random(shape).astype(np.float32), A)


def _world_samples(img: nib.Nifti1Image, points: np.ndarray) -> np.ndarray:
    """Nearest-voxel values at world points that sit on voxel centres."""
    idx = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine), points)).astype(int)
    return np.asarray(img.dataobj)[tuple(idx.T)]


def _world_points(img):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in img.shape], indexing="ij"), -1)
    return nib.affines.apply_affine(img.affine, idx.reshape(-1, 3))


EXACT_PAIRS = [
    (VoxelShift((1, -2, 3)), VoxelShift((2, 1, -1))),
    (Gain(1.7), Gain(0.4)),
    (MonotoneContrast(1.3, 2.0), MonotoneContrast(0.6, 2.0)),
    (BiasField(tuple(np.linspace(-0.2, 0.3, 9)), (2.0, 1.0, 1.5)), BiasField((0.1,) * 9)),
    (TimeShift(3), TimeShift(-5)),
    (SetPermutation((2, 0, 1, 3), axis=-1), SetPermutation((3, 2, 1, 0), axis=-1)),
]


@pytest.mark.parametrize("g, h", EXACT_PAIRS, ids=lambda a: type(a).__name__)
def test_exact_actions_compose_as_a_group(g, h, rng):
    x = torch.as_tensor(rng.random((2, 1, 6, 5, 4)))
    if isinstance(g, BiasField):
        h = BiasField(h.coefficients, g.spacing)
    np.testing.assert_allclose(g(h(x)), (g @ h)(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.inverse()(g(x)), x, rtol=1e-10, atol=1e-12)
    # numpy arrays get the same action as tensors
    np.testing.assert_allclose(g(x.numpy()), g(x).numpy(), rtol=1e-12)


def test_set_permutation_moves_element_j_to_perm_j():
    x = torch.arange(4.0)
    y = SetPermutation((2, 0, 1, 3))(x)
    assert y.tolist() == [1.0, 2.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="not a permutation"):
        SetPermutation((0, 0, 1))


def test_time_shift_is_circular_and_zero_mod_T(rng):
    x = rng.random((2, 2, 2, 12))
    np.testing.assert_array_equal(TimeShift(12)(x), x)
    np.testing.assert_array_equal(TimeShift(1)(x)[..., 1:], x[..., :-1])


def test_monotone_contrast_preserves_order(rng):
    x = rng.random(1000) * 3.0
    y = MonotoneContrast(0.7, 3.0)(x)
    assert (np.argsort(x) == np.argsort(y)).all()


def test_rician_noise_is_reproducible_and_positive(rng):
    x = np.zeros((4, 4, 4))
    a, b = RicianNoise(0.5, seed=3)(x), RicianNoise(0.5, seed=3)(x)
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all() and a.mean() == pytest.approx(0.5 * np.sqrt(np.pi / 2), rel=0.15)


def test_axis_permutations_compose_and_keep_world_content(rng):
    img = _image(rng)
    pts = _world_points(img)
    g, h = (
        AxisPermutation((2, 0, 1), (True, False, True)),
        AxisPermutation((1, 0, 2), (False, True, True)),
    )
    gh = g(h(img))
    np.testing.assert_array_equal(gh.get_fdata(), (g @ h)(img).get_fdata())
    np.testing.assert_allclose(gh.affine, (g @ h)(img).affine, atol=1e-5)  # header stores float32
    np.testing.assert_array_equal(_world_samples(gh, pts), _world_samples(img, pts))
    back = g.inverse()(g(img))
    np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)  # header stores float32


@pytest.mark.parametrize("codes", ["LPS", "AIR", "SRA"])
def test_reorient_image_sets_codes_and_keeps_world_content(codes, rng):
    img = _image(rng)
    out = reorient_image(img, codes)
    assert "".join(nib.aff2axcodes(out.affine)) == codes
    pts = _world_points(img)
    np.testing.assert_array_equal(_world_samples(out, pts), _world_samples(img, pts))
    with pytest.raises(ValueError, match="orientation codes"):
        reorient_image(img, "RRS")


def test_header_pose_is_exact_and_composes(rng):
    img = _image(rng)
    R1, R2 = random_rotations(2, seed=4)
    g, h = HeaderPose(R1, (3.0, 0.0, -2.0)), HeaderPose(R2, (0.0, 5.0, 1.0))
    np.testing.assert_allclose(
        g(h(img)).affine, (g @ h)(img).affine, atol=1e-5
    )  # header stores float32
    np.testing.assert_array_equal(g(img).get_fdata(), img.get_fdata())  # voxels untouched
    np.testing.assert_allclose(
        g.inverse()(g(img)).affine, img.affine, atol=1e-5
    )  # header stores float32


def _blob(n=21, centre=(3.0, -2.0, 1.0)):
    ax = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    return torch.exp(-((p - torch.tensor(centre)) ** 2).sum(-1) / 6.0)[None, None], p


def _com(v, p):
    return (v[0, 0, ..., None] * p).sum((0, 1, 2)) / v.sum()


def test_translation_and_rigid_motion_move_the_centre_of_mass():
    x, p = _blob()
    y = Translation((2.0, -1.0, 0.5))(x)
    np.testing.assert_allclose(_com(y, p), _com(x, p) + torch.tensor([2.0, -1.0, 0.5]), atol=0.05)
    R = axis_angle_matrix([1.0, 0.0, 1.0], 0.6)
    g = RigidMotion(R, (1.0, 1.0, -1.0))
    np.testing.assert_allclose(_com(g(x), p), R @ _com(x, p).numpy() + [1.0, 1.0, -1.0], atol=0.1)
    # resampled actions compose up to interpolation error
    h = RigidMotion(axis_angle_matrix([0.0, 1.0, 0.0], -0.4), (0.0, -2.0, 0.0))
    err = (g(h(x)) - (g @ h)(x)).norm() / x.norm()
    assert err < 0.05
    np.testing.assert_allclose((g @ g.inverse()).matrix, np.eye(3), atol=1e-12)


def test_voxel_shift_equals_translation_inside_the_grid():
    x, _ = _blob()
    a, b = VoxelShift((2, 0, -1))(x), Translation((2.0, 0.0, -1.0))(x)
    np.testing.assert_allclose(a[..., 2:, :, :-1], b[..., 2:, :, :-1], atol=1e-6)  # no wrap-around


def test_equivariance_error_zero_for_invariant_and_large_for_non_invariant(rng):
    x = torch.as_tensor(rng.random((3, 1, 7, 7, 7)))
    rotations = list(cube_rotations()[1:6])
    invariant = lambda v: torch.stack([v.flatten(1).sum(1), v.flatten(1).pow(2).sum(1)], 1)  # noqa: E731
    corner = lambda v: v[:, :, :3, :3, :3].flatten(1)  # noqa: E731
    assert equivariance_error(invariant, x, rotations).max() < 1e-12
    assert equivariance_error(corner, x, rotations).min() > 0.2
    # gauges: a gain-invariant statistic against a gain-sensitive one
    gains = [Gain(a) for a in (0.5, 2.0, 3.0)]
    corr = lambda v: torch.corrcoef(v.flatten(1))[:1, 1:]  # noqa: E731
    assert equivariance_error(corr, x, gains).max() < 1e-12
    assert equivariance_error(lambda v: v.flatten(1).mean(1, keepdim=True), x, gains).min() > 0.4
