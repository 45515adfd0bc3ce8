"""BOLD input checks, sidecar inheritance, non-steady-state detection."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import ImageError, InputError
from pipeline.func.bold import bold_metadata, check_bold, detect_nonsteady, sidecar_files


def _bold(path, n_vol=12, tr=2.0, shape=(6, 7, 5), rng=None):
    rng = rng or np.random.default_rng(0)
    data = (1000 + rng.normal(0, 10, size=(*shape, n_vol))).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((3.0, 3.0, 3.0, tr))
    nib.save(img, path)
    return path


def test_sidecar_inheritance(tmp_path):
    (tmp_path / "dataset_description.json").write_text("{}")
    (tmp_path / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 3.0, "A": 1}))
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    bold = _bold(func / "sub-01_task-rest_bold.nii.gz")
    (func / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    (func / "sub-01_task-other_bold.json").write_text(json.dumps({"RepetitionTime": 9.0}))
    assert [p.name for p in sidecar_files(bold)] == [
        "task-rest_bold.json",
        "sub-01_task-rest_bold.json",
    ]
    assert bold_metadata(bold) == {"RepetitionTime": 2.0, "A": 1}


def test_check_bold_accepts_good_run(tmp_path):
    img, tr = check_bold(_bold(tmp_path / "b.nii.gz"), {"RepetitionTime": 2.0})
    assert tr == 2.0 and img.shape[3] == 12


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("3d", ImageError, "3-D .* expected 4-D"),
        ("short", ImageError, "has 5 volumes, at least 10"),
        ("no_tr", InputError, "RepetitionTime is missing"),
        ("bad_tr", InputError, "positive number"),
        ("tr_mismatch", ImageError, r"TR in the header \(2 s\) differs .* \(2.5 s\)"),
        ("nan", ImageError, "NaN or Inf"),
        ("slice_timing", InputError, "SliceTiming values must lie"),
    ],
)
def test_check_bold_errors_are_one_line(tmp_path, kind, error, match):
    meta = {"RepetitionTime": 2.0}
    path = _bold(tmp_path / "b.nii.gz", n_vol=5 if kind == "short" else 12)
    if kind == "3d":
        img = nib.load(path)
        nib.save(nib.Nifti1Image(img.get_fdata()[..., 0], img.affine), path)
    elif kind == "no_tr":
        meta = {}
    elif kind == "bad_tr":
        meta = {"RepetitionTime": "2"}
    elif kind == "tr_mismatch":
        meta = {"RepetitionTime": 2.5}
    elif kind == "nan":
        img = nib.load(path)
        data = img.get_fdata()
        data[1, 1, 1, 3] = np.nan
        nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine, img.header), path)
    elif kind == "slice_timing":
        meta["SliceTiming"] = [0.0, 1.0, 3.0, 0.5, 1.5]
    with pytest.raises(error, match=match) as info:
        check_bold(path, meta)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_detect_nonsteady(rng):
    data = 1000 + rng.normal(0, 5, size=(8, 8, 8, 30))
    assert detect_nonsteady(data) == 0
    data[..., 0] *= 1.6
    data[..., 1] *= 1.3
    data[..., 2] *= 1.1
    assert detect_nonsteady(data) == 3
