"""Header sanitisation and clean one-line errors for bad T1w inputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.anat.header import sanitize_t1w
from pipeline.errors import ImageError


def _save(tmp_path, data, affine=None, name="bad_T1w.nii.gz"):
    path = tmp_path / name
    nib.save(
        nib.Nifti1Image(
            np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine
        ),
        path,
    )
    return path


@pytest.mark.parametrize(
    ("data", "affine", "match"),
    [
        (np.random.default_rng(0).random((8, 8, 8, 3)), None, r"4-D .* expected 3-D"),
        (np.random.default_rng(0).random((8, 8)), None, r"2-D .* expected 3-D"),
        (np.zeros((8, 8, 8)), None, r"constant"),
        (
            np.where(np.eye(8)[:, :, None] > 0, np.nan, 1.0) * np.ones((8, 8, 8)),
            None,
            r"NaN or Inf",
        ),
        (
            np.random.default_rng(0).random((8, 8, 8)),
            np.diag([1.0, 1.0, 12.0, 1.0]),
            r"anisotropic",
        ),
    ],
    ids=["4d", "2d", "all-zero", "nan", "anisotropic"],
)
def test_bad_inputs_give_one_line_image_errors(tmp_path, data, affine, match):
    path = _save(tmp_path, data, affine)
    with pytest.raises(ImageError, match=match) as info:
        sanitize_t1w(path)
    assert "\n" not in str(info.value)
    assert "bad_T1w.nii.gz" in str(info.value)


def test_reorients_to_ras_and_keeps_world_coordinates(tmp_path, rng):
    data = rng.random((6, 7, 8)).astype(np.float32)
    lps = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
    img, report = sanitize_t1w(_save(tmp_path, data, lps, "lps.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert report["original_orientation"] == "LPS"
    # the world position of every voxel value is unchanged
    i, j, k = 1, 2, 3
    world = lps @ [i, j, k, 1]
    ii, jj, kk = np.round(np.linalg.inv(img.affine) @ world)[:3].astype(int)
    assert img.get_fdata()[ii, jj, kk] == pytest.approx(data[i, j, k])


def test_qform_sform_disagreement_prefers_sform(tmp_path, rng):
    img = nib.Nifti1Image(rng.random((6, 6, 6)).astype(np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = [5, 0, 0]
    img.set_sform(shifted, code=2)
    img.set_qform(np.eye(4), code=1)
    path = tmp_path / "disagree.nii.gz"
    nib.save(img, path)
    out, report = sanitize_t1w(path)
    assert report["affine_source"] == "sform"
    assert report["qform_sform_disagreement_mm"] == pytest.approx(5.0)
    np.testing.assert_allclose(out.affine[:3, 3], [5, 0, 0])
