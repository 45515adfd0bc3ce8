"""Input checks at the boundary and atomic writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import ImageError
from pipeline.io import atomic_path, check_image, remove_stale_parts, save_image


def _img(shape=(8, 9, 10), affine=None, data=None):
    data = np.random.default_rng(0).random(shape).astype(np.float32) if data is None else data
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)


def test_valid_image_passes_and_is_idempotent(tmp_path):
    path = save_image(_img(), tmp_path / "a.nii.gz")
    once = check_image(path)
    assert check_image(once) is once
    assert once.shape == (8, 9, 10)


def test_trailing_singleton_is_squeezed(tmp_path):
    path = save_image(_img((8, 9, 10, 1)), tmp_path / "a.nii.gz")
    assert check_image(path).shape == (8, 9, 10)


def _nan_image():
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    return _img(data=data)


@pytest.mark.parametrize(
    ("image", "ndim", "pattern"),
    [
        (lambda: _img((8, 9, 10, 5)), 3, r"4-D .* expected 3-D"),
        (lambda: _img((8, 9)), 3, r"2-D .* expected 3-D"),
        (lambda: _img((8, 9, 10)), 4, r"3-D .* expected 4-D"),
        (lambda: _img(data=np.zeros((8, 8, 8), np.float32)), 3, r"constant"),
        (_nan_image, 3, r"1 NaN or Inf"),
        (lambda: _img(affine=np.diag([0.5, 0.5, 8.0, 1.0])), 3, r"anisotropic"),
    ],
)
def test_bad_images_give_one_line_errors(tmp_path, image, ndim, pattern):
    path = tmp_path / "bad.nii.gz"
    nib.save(image(), str(path))
    with pytest.raises(ImageError, match=pattern) as info:
        check_image(path, ndim=ndim)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


@pytest.mark.parametrize(
    ("srow_z", "pattern"),
    [([0.0, 0.0, 0.0, 0.0], "singular"), ([0.0, 0.0, np.nan, 0.0], "NaN or Inf")],
)
def test_bad_affines_on_disk(tmp_path, srow_z, pattern):
    path = tmp_path / "bad_affine.nii"
    nib.save(_img(), str(path))
    raw = bytearray(path.read_bytes())
    raw[252:256] = np.array([0, 1], dtype="<i2").tobytes()  # qform_code 0, sform_code 1
    raw[312:328] = np.asarray(srow_z, dtype="<f4").tobytes()  # srow_z
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=pattern) as info:
        check_image(path)
    assert "\n" not in str(info.value)


def test_truncated_and_garbage_files(tmp_path):
    good = save_image(_img((20, 20, 20)), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ImageError, match="truncated|cannot read"):
        check_image(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not an image at all" * 10))
    with pytest.raises(ImageError, match=str(garbage)):
        check_image(garbage)
    with pytest.raises(ImageError, match="does not exist"):
        check_image(tmp_path / "missing.nii.gz")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(dest) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"ok")
    assert dest.read_bytes() == b"ok" and len(list(tmp_path.iterdir())) == 1


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = save_image(_img(), tmp_path / "a.nii.gz")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_stale_parts_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    """A SIGKILL mid-write leaves atomic_path's hidden temporary; a rerun clears only those."""
    import subprocess
    import sys

    dest = tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    code = (
        "import os, signal, sys\n"
        "from pipeline.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(dest)], check=False)
    assert proc.returncode == -9
    (left,) = dest.parent.iterdir()
    assert left.name.startswith(".sub-01_T1w.part-") and not dest.exists()
    keep = [
        dest.parent / "sub-01_desc-brain_mask.nii.gz",
        dest.parent / ".hidden_but_ours.nii.gz",
        tmp_path / ".sub-02_T1w.part-abcd1234.nii.gz",  # another subject's, at the top
    ]
    for path in keep:
        path.write_bytes(b"x")
    assert remove_stale_parts(tmp_path / "sub-01") == [left]
    assert not left.exists() and all(p.exists() for p in keep)
    assert remove_stale_parts(tmp_path, prefix="sub-01_", recursive=False) == []
    assert remove_stale_parts(tmp_path, prefix="sub-02_", recursive=False) == [keep[2]]


def test_header_is_checked_against_the_file_before_any_data_is_read(tmp_path, monkeypatch):
    from pipeline.io import check_header

    path = save_image(_img((20, 20, 20)), tmp_path / "a.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    # a gzip whose trailer disagrees (two members) is counted by streaming, and passes
    path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    assert check_header(path) == path
    # a payload one voxel short is refused from the header, naming both sizes
    path.write_bytes(gzip.compress(raw[:-4]))
    monkeypatch.setattr(nib, "load", lambda *a, **k: pytest.fail("data read before the check"))
    with pytest.raises(ImageError, match=r"declares 20×20×20 voxels of float32 \(32\.0 kB\) but"):
        check_image(path)


def test_json_errors_name_the_problem(tmp_path):
    import os

    from pipeline.errors import InputError
    from pipeline.io import read_json

    bad = tmp_path / "a.json"
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InputError, match="not UTF-8"):
        read_json(bad)
    os.symlink(tmp_path / "gone.json", tmp_path / "link.json")
    with pytest.raises(InputError, match="broken symbolic link"):
        read_json(tmp_path / "link.json")
    with pytest.raises(InputError, match="is a directory"):
        read_json(tmp_path)
