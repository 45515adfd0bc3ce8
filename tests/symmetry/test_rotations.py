"""SO(3) sampling, physical-space rotations of volumes and images, equivariance measures."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.symmetry import (
    Rotation,
    axis_angle_matrix,
    cube_rotations,
    equivariance_error,
    random_rotations,
    resampling_floor,
    rotate_cube,
    rotate_image,
    rotate_volume,
    rotation_angle,
)


def test_random_rotations_are_rotations_and_haar():
    R = random_rotations(4000, seed=0)
    np.testing.assert_allclose(
        R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and the angle density is (1 - cos θ)/π, whose mean is π/2 + 2/π
    assert np.abs(R.mean(0)).max() < 0.05
    assert rotation_angle(R).mean() == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.03)


def _blob(n: int = 21, spacing=(1.0, 1.0, 1.0), centre=(3.0, -2.0, 1.0)) -> torch.Tensor:
    axes = [(torch.arange(n) - (n - 1) / 2) * s for s in spacing]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    return torch.exp(-((p - torch.tensor(centre)) ** 2).sum(-1) / 8.0)[None, None]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 2.0)])
def test_rotate_volume_moves_the_centre_of_mass_by_R(spacing):
    """Rotating a blob about the grid centre moves its physical centre of mass c to R c."""
    R = axis_angle_matrix([1.0, 2.0, 0.5], 0.7)
    x = _blob(spacing=spacing)
    y = rotate_volume(x, R, spacing=spacing)
    axes = [(torch.arange(21) - 10.0) * s for s in spacing]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).double()
    com = lambda v: (v[0, 0, ..., None].double() * p).sum((0, 1, 2)) / v.double().sum()  # noqa: E731
    np.testing.assert_allclose(com(y).numpy(), R @ com(x).numpy(), atol=0.15)


def test_rotate_image_matches_world_rotation():
    data = _blob(centre=(4.0, 0.0, 0.0))[0, 0].numpy()
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    R = axis_angle_matrix([0, 0, 1], np.pi / 2)  # +90° about z: +x goes to +y
    out = rotate_image(img, R).get_fdata()
    peak = np.unravel_index(np.argmax(out), out.shape)
    assert peak == (10, 14, 10)  # the blob sat 4 voxels along +x of the centre, now along +y


def test_equivariance_error_zero_for_invariant_and_large_for_not():
    x = torch.randn(3, 1, 9, 9, 9)
    acts = [lambda v, g=g: rotate_cube(v, g) for g in cube_rotations()]
    invariant = lambda v: v.flatten(1).pow(2).sum(1, keepdim=True)  # noqa: E731
    not_invariant = lambda v: v[:, :, :4].flatten(1).sum(1, keepdim=True)  # noqa: E731
    e_inv = equivariance_error(invariant, x, acts)
    e_not = equivariance_error(not_invariant, x, acts)
    assert e_inv.shape == (24, 3)
    assert e_inv.max() < 1e-5
    absolute = equivariance_error(not_invariant, x, acts, relative=False)
    torch.testing.assert_close(absolute, e_not * not_invariant(x).abs()[None, :, 0])
    assert e_not[1:].mean() > 0.1
    # equivariance of the identity map with the matching output action
    assert equivariance_error(lambda v: v, x, acts, acts).max() == 0


def test_resampling_floor_small_for_smooth_input_and_zero_for_identity():
    x = _blob()
    gs = [Rotation(R) for R in random_rotations(3, seed=1)]
    floor = resampling_floor(lambda v: v.flatten(1), x, gs)
    assert 0 < floor.max() < 0.1
    assert resampling_floor(lambda v: v.flatten(1), x, [Rotation(np.eye(3))]).max() < 1e-6


def test_equivariance_error_checks_lengths():
    with pytest.raises(ValueError, match="2 input actions but 1 output"):
        equivariance_error(
            lambda v: v, torch.zeros(1, 1, 3, 3, 3), [lambda v: v] * 2, [lambda v: v]
        )
