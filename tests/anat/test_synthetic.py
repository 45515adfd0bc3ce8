"""The phantom maker (:mod:`pipeline.anat.synthetic`): the cube sampler reads the template where
it says, the layouts store one world image, the gauge is the audit's, the tissue phantom adds up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.anat.synthetic import (
    cube_points,
    pose_image,
    rigid_about,
    sample_template,
    smooth_displacement,
    tissue_phantom,
)
from pipeline.symmetry import Gain, MonotoneContrast, reorient_image


def _source(rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(rng.normal(size=(1, 1, 15, 16, 17)).astype(np.float32))


def test_cube_sampler_reads_the_template_block_and_follows_a_shift(rng):
    src = _source(rng)
    centre = np.array([7.0, 8.0, 8.0])
    p = cube_points(5, 2.0)[None]  # 2 mm = one template voxel: no interpolation
    block = src[0, 0, 5:10, 6:11, 6:11]
    assert torch.allclose(sample_template(src, centre, p)[0, 0], block, atol=1e-6)
    # a point moved by +2 mm along the first axis reads the next voxel, not the previous one
    shifted = sample_template(src, centre, p + torch.tensor([2.0, 0.0, 0.0]))[0, 0]
    assert torch.allclose(shifted, src[0, 0, 6:11, 6:11, 6:11], atol=1e-6)
    assert not torch.allclose(shifted, src[0, 0, 4:9, 6:11, 6:11], atol=1e-3)


def test_smooth_displacement_is_seeded_and_smooth():
    a = smooth_displacement(torch.Generator().manual_seed(3), 2, 9, 4.0)
    b = smooth_displacement(torch.Generator().manual_seed(3), 2, 9, 4.0)
    assert a.shape == (2, 3, 9, 9, 9) and torch.equal(a, b)
    nodes = a[:, :, ::2, ::2, ::2]  # side 9 from 5 nodes: every other voxel is a node
    assert 3.5 < float(nodes.std()) < 4.5  # the amplitude asked for (750 draws)
    # between the nodes the field is linear: a midpoint is the mean of its two nodes
    mid = a[:, :, 1::2, ::2, ::2]
    assert torch.allclose(mid, 0.5 * (nodes[:, :, :-1] + nodes[:, :, 1:]), atol=1e-5)


def test_pose_image_layouts_store_the_same_world_image(template2):
    pose = rigid_about(np.eye(3)[[1, 0, 2]] * [[1], [-1], [1]], np.zeros(3), [4.0, -6.0, 2.0])
    ras = pose_image(template2.t1w, pose, voxel_size=6.0)
    for layout in ("LPS", "permuted"):
        other = pose_image(template2.t1w, pose, voxel_size=6.0, layout=layout)
        assert other.shape != ras.shape or not np.allclose(other.affine, ras.affine)
        back = reorient_image(other, "RAS")
        np.testing.assert_allclose(back.affine, ras.affine, atol=1e-9)
        np.testing.assert_array_equal(back.get_fdata(), ras.get_fdata())


def test_pose_image_gauge_is_the_audit_contrast_and_gain(template2):
    plain = pose_image(template2.t1w, np.eye(4), voxel_size=6.0).get_fdata()
    gauged = pose_image(template2.t1w, np.eye(4), voxel_size=6.0, gamma=1.4, gain=2.0).get_fdata()
    fg = plain > 0
    ref = 100.0  # the plain image's maximum: the contrast change keeps it fixed
    expected = Gain(2.0)(MonotoneContrast(1.4, ref)(plain[fg]))
    np.testing.assert_allclose(gauged[fg], expected, rtol=1e-4)
    with pytest.raises(AssertionError):  # a different exponent is told apart
        np.testing.assert_allclose(gauged[fg], Gain(2.0)(MonotoneContrast(1.2, ref)(plain[fg])))


def test_tissue_phantom_partitions_the_brain():
    p = tissue_phantom((16, 18, 14), shift=0.1)
    total = p["gm"] + p["wm"] + p["csf"]
    inside = p["mask"] > 0
    assert total.max() <= 1.0 + 1e-12
    assert np.all(total[inside] > 0.5) and np.all(total[~inside] <= 0.5)
    # the shift moves the brain towards +x
    x = np.arange(16)[:, None, None]
    assert (x * p["mask"]).sum() / p["mask"].sum() > (16 - 1) / 2
