"""RAS (nibabel) <-> LPS (ANTs) conversions and the fixed -> moving transform convention."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.anat.synthetic import pose_image, rigid_about
from pipeline.antsio import (
    ants_to_nib,
    nib_to_ants,
    read_affine,
    strip_hdf5_times,
    write_affine,
)


def test_image_roundtrip_keeps_world_geometry(small_template):
    t1w, _ = small_template
    for layout in ("RAS", "LPS", "permuted"):
        img = pose_image(t1w, np.eye(4), layout=layout)
        back = ants_to_nib(nib_to_ants(img))
        np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
        np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())
    # the ANTs origin is the LPS position of voxel 0
    a = nib_to_ants(t1w)
    np.testing.assert_allclose(
        a.origin, [-t1w.affine[0, 3], -t1w.affine[1, 3], t1w.affine[2, 3]], atol=1e-4
    )


def test_affine_file_roundtrip(tmp_path):
    m = rigid_about(
        Rotation.from_euler("xyz", [30, -20, 100], degrees=True).as_matrix(), [1, 2, 3], [5, -3, 8]
    )
    m[:3, :3] *= [[1.1], [0.9], [1.0]]  # a general affine
    for ext in (".mat", ".h5"):
        path = write_affine(m, tmp_path / f"t{ext}")
        np.testing.assert_allclose(read_affine(path), m, atol=1e-5)


def test_written_transform_pulls_posed_image_back(small_template, brain_points, tmp_path):
    """A RAS template->subject map written by write_affine makes ANTs undo the pose."""
    t1w, mask = small_template
    _, center = brain_points
    truth = rigid_about(
        Rotation.from_euler("zyx", [120, 40, -70], degrees=True).as_matrix(), center, [8, -5, 3]
    )
    subject = pose_image(t1w, truth, layout="LPS")
    xfm = write_affine(truth, tmp_path / "truth.mat")
    back = ants.apply_transforms(nib_to_ants(t1w), nib_to_ants(subject), [str(xfm)]).numpy()
    m = mask.get_fdata() > 0
    assert np.corrcoef(back[m], t1w.get_fdata()[m])[0, 1] > 0.85  # 6 mm, two linear resamplings
    wrong = write_affine(np.linalg.inv(truth), tmp_path / "wrong.mat")
    back = ants.apply_transforms(nib_to_ants(t1w), nib_to_ants(subject), [str(wrong)]).numpy()
    assert np.corrcoef(back[m], t1w.get_fdata()[m])[0, 1] < 0.5


def test_ants_to_nib_sets_mm_units():
    img = ants_to_nib(ants.from_numpy(np.ones((3, 4, 5), np.float32), spacing=(2.0, 2.0, 2.0)))
    assert img.header.get_xyzt_units()[0] == "mm"
    assert isinstance(img, nib.Nifti1Image)


def test_stripped_hdf5_transforms_are_byte_identical_and_still_read(small_template, tmp_path):
    """ITK stamps HDF5 objects with the time: the same transform written twice differs on disk."""
    import time

    t1w, _ = small_template
    m = rigid_about(
        Rotation.from_euler("xyz", [10, 0, -35], degrees=True).as_matrix(), [0, 0, 0], [3, 1, -2]
    )
    first = write_affine(m, tmp_path / "a.h5")
    original = first.read_bytes()
    time.sleep(1.1)
    second = write_affine(m, tmp_path / "b.h5")
    assert first.read_bytes() != second.read_bytes()  # timestamps differ
    for path in (first, second):
        strip_hdf5_times(path)
    assert first.read_bytes() == second.read_bytes()
    np.testing.assert_array_equal(read_affine(first), read_affine(second))
    # ANTs reads the rewritten file and resamples exactly as with ITK's own
    (tmp_path / "orig.h5").write_bytes(original)
    fixed = nib_to_ants(t1w)
    warped = [
        ants.apply_transforms(fixed, fixed, [str(p)]).numpy() for p in (tmp_path / "orig.h5", first)
    ]
    np.testing.assert_array_equal(warped[0], warped[1])


def test_itk_affine_series_round_trips_and_matches_ants(tmp_path):
    """The multi-transform file (fMRIPrep's hmc format) holds what ANTs' own writer holds."""
    import ants
    from scipy.spatial.transform import Rotation

    from pipeline.antsio import read_itk_affines, write_itk_affines

    rng = np.random.default_rng(3)
    mats = np.tile(np.eye(4), (3, 1, 1))
    for m in mats:
        m[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        m[:3, 3] = rng.normal(0, 5, 3)
    path = write_itk_affines(mats, tmp_path / "hmc.txt")
    np.testing.assert_allclose(read_itk_affines(path), mats, atol=1e-8)
    # ITK itself reads a block as the same point map (RAS in, LPS for ITK)
    one = write_itk_affines(mats[1:2], tmp_path / "one.txt")
    point = [10.0, -20.0, 30.0]
    ras = mats[1] @ np.array([*point, 1.0])
    moved = ants.read_transform(str(one)).apply_to_point([-point[0], -point[1], point[2]])
    np.testing.assert_allclose([-moved[0], -moved[1], moved[2]], ras[:3], atol=1e-4)
