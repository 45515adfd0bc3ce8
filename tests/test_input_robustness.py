"""Input robustness: one bad file never costs the dataset, and every refusal says why in one line.

A battery of broken inputs made on the fly, checked at the unit level (fast), a seeded fuzz of
header bytes, file tails and sidecar texts (the property: a one-line error naming the file, or
success; never another exception), and one end-to-end run of the cheapest configuration showing
that a dataset with one broken sidecar still processes the other subject and the group stage.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.bids import (
    bold_files,
    check_bids_dir,
    select_participants,
    sidecar_problem,
    t1w_file,
)
from pipeline.cli import main
from pipeline.errors import (
    BIDSError,
    ImageError,
    InputError,
    OutputError,
    ParticipantError,
    SymprepError,
)
from pipeline.io import check_header, check_image, check_writable_dir

# byte offsets of NIfTI-1 header fields
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET = 40, 70, 72, 76, 108
QFORM_CODE, SFORM_CODE, SROW_X = 252, 254, 280


def _one_line(exc: BaseException, path) -> str:
    message = str(exc)
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message, (path, message)
    return message


def _cli_error(capsys) -> str:
    """The one error line of a failed command (log lines may come before it), no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("symprep: error:")]
    return line


def _save(tmp_path, name="img.nii.gz", shape=(8, 9, 10), dtype=np.float32, data=None):
    if data is None:
        data = np.random.default_rng(0).random(shape).astype(dtype)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _patch(path, edits: dict[int, bytes]):
    """Overwrite header bytes of a .nii or .nii.gz file (recompressing the latter)."""
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    for offset, value in edits.items():
        raw[offset : offset + len(value)] = value
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def _dims(*dims: int) -> bytes:
    return struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))


def _pixdim(x, y, z) -> bytes:
    return struct.pack("<4f", 1.0, x, y, z)


def _nan_volume(tmp_path):
    data = np.ones((8, 8, 8, 3), np.float32) + np.arange(3, dtype=np.float32)
    data[..., 1] = np.nan
    return _save(tmp_path, data=data), 4


def _truncated(tmp_path):
    good = _save(tmp_path, "good.nii.gz", shape=(20, 20, 20))
    bad = tmp_path / "img.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad, 3


def _singular(tmp_path):  # nibabel 5.4 refuses singular affines: write the sform by hand
    path = _save(tmp_path, "img.nii")
    srow = struct.pack("<12f", 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0)
    return _patch(path, {QFORM_CODE: struct.pack("<2h", 0, 1), SROW_X: srow}), 3


def _huge(ext):
    def make(tmp_path):
        path = _save(tmp_path, f"img{ext}", shape=(4, 4, 4), dtype=np.int16)
        return _patch(path, {DIM: _dims(20000, 20000, 20000)}), 3

    return make


def _header_edit(edits, ext=".nii.gz", shape=(8, 9, 10)):
    def make(tmp_path):
        return _patch(_save(tmp_path, f"img{ext}", shape=shape), edits), 3

    return make


def _complex(tmp_path):
    data = (np.random.default_rng(0).random((6, 6, 6)) * (1 + 1j)).astype(np.complex64)
    return _save(tmp_path, data=data), 3


def _broken_link(tmp_path):
    link = tmp_path / "img.nii.gz"
    os.symlink(tmp_path / "gone.nii.gz", link)
    return link, 3


def _garbage(tmp_path):
    path = tmp_path / "img.nii.gz"
    path.write_bytes(gzip.compress(b"not an image at all" * 30))
    return path, 3


IMAGE_CASES = {
    "truncated gzip": (_truncated, r"truncated"),
    "NaN volume": (_nan_volume, r"NaN or Inf"),
    "2-D T1w": (lambda p: (_save(p, shape=(8, 9)), 3), r"2-D .* expected 3-D"),
    "4-D T1w": (lambda p: (_save(p, shape=(8, 9, 10, 4)), 3), r"4-D .* expected 3-D"),
    "singular affine": (_singular, r"singular"),
    "huge header .nii": (_huge(".nii"), r"declares 20000×20000×20000 voxels .* holds"),
    "huge header .nii.gz": (_huge(".nii.gz"), r"declares 20000×20000×20000 voxels .* holds"),
    "complex T1w": (_complex, r"complex"),
    "zero voxel size": (_header_edit({PIXDIM: _pixdim(2, 0, 2)}), r"voxel sizes .* positive"),
    "negative voxel size": (
        _header_edit({PIXDIM: _pixdim(2, -2, 2)}, ".nii"),
        r"voxel sizes .* positive",
    ),
    "NaN voxel size": (
        _header_edit({PIXDIM: _pixdim(np.nan, 2, 2)}),
        r"voxel sizes .* finite",
    ),
    "empty image": (_header_edit({DIM: _dims(0, 9, 10)}), r"empty"),
    "payload shorter than declared": (
        _header_edit({DIM: _dims(8, 9, 100)}, ".nii"),
        r"declares 8×9×100 voxels of float32 .* holds 2\.9 kB",
    ),
    "data offset past the end": (
        _header_edit({VOX_OFFSET: struct.pack("<f", 1e6)}),
        r"declares .* holds 0 bytes",
    ),
    "RGB data type": (
        _header_edit({DATATYPE: struct.pack("<2h", 128, 24)}, shape=(8, 9, 10)),
        r"not a real-valued scalar type|declares",
    ),
    "broken symlink": (_broken_link, r"broken symbolic link"),
    "not a NIfTI file": (_garbage, r"not a NIfTI image|not a readable"),
    "missing file": (lambda p: (p / "nope.nii.gz", 3), r"does not exist"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_each_broken_image_gets_a_one_line_error_naming_it(tmp_path, case):
    make, pattern = IMAGE_CASES[case]
    path, ndim = make(tmp_path)
    with pytest.raises(ImageError, match=pattern) as info:
        check_image(path, ndim=ndim)
    _one_line(info.value, path)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_a_huge_declared_size_is_refused_from_the_header_without_allocating(tmp_path, ext):
    path, _ = _huge(ext)(tmp_path)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ImageError) as info:
            check_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = _one_line(info.value, path)
    assert "16.0 TB" in message  # 20000³ int16 voxels, declared
    assert time.monotonic() - start < 5 and peak < 20e6


def test_valid_images_pass_the_header_check(tmp_path):
    for ext in (".nii", ".nii.gz"):
        for shape, dtype in (((8, 9, 10), np.float32), ((6, 6, 6, 5), np.int16)):
            path = _save(tmp_path, f"ok{ext}", shape=shape, dtype=dtype)
            assert check_header(path) == path
    multi = tmp_path / "multi.nii.gz"  # a multi-member gzip: the trailer holds the last member only
    raw = gzip.decompress(_save(tmp_path, "one.nii.gz").read_bytes())
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert check_image(multi).shape == (8, 9, 10)


def test_in_memory_complex_images_are_refused():
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.complex64) * 1j, np.eye(4))
    with pytest.raises(ImageError, match="complex"):
        check_image(img, allow_constant=True)


# --- sidecars -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"RepetitionTime": 2.0,', r"invalid JSON"),
        ("", r"invalid JSON"),
        ("[1, 2]", r"not a JSON object"),
        ('{"RepetitionTime": 0}', r"RepetitionTime must be a positive number .* got 0"),
        ('{"RepetitionTime": -2.5}', r"positive number .* got -2\.5"),
        ('{"RepetitionTime": NaN}', r"positive number .* got nan"),
        ('{"RepetitionTime": "2"}', r"positive number .* got '2'"),
        ('{"RepetitionTime": true}', r"positive number .* got True"),
        (b"\xff\xfe{}", r"not UTF-8"),
    ],
)
def test_each_broken_sidecar_gets_a_reason(tmp_path, text, pattern):
    import re

    path = tmp_path / "sub-01_task-rest_bold.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    reason = sidecar_problem(path)
    assert reason is not None and re.search(pattern, reason) and "\n" not in reason
    assert sidecar_problem(tmp_path / "x.json") == "file does not exist"
    os.symlink(tmp_path / "gone.json", tmp_path / "link.json")
    assert "broken symbolic link" in sidecar_problem(tmp_path / "link.json")
    (tmp_path / "ok.json").write_text('{"RepetitionTime": 2, "TaskName": "rest"}')
    assert sidecar_problem(tmp_path / "ok.json") is None


# --- a dataset with one broken file -------------------------------------------------------------


@pytest.fixture
def bids(tiny_bids, tmp_path):
    return shutil.copytree(tiny_bids, tmp_path / "bids", symlinks=True)


def _layout_problem(bids, subject, func):
    layout = check_bids_dir(bids)
    assert sorted(layout.get_subjects()) == ["01", "02"]
    with pytest.raises(InputError) as info:
        func(layout, subject)
    return layout, str(info.value)


def test_a_malformed_bold_sidecar_fails_only_its_subject(bids, caplog):
    bad = bids / "sub-02" / "func" / "sub-02_task-rest_bold.json"
    bad.write_text('{"RepetitionTime": 2.0,')
    layout, message = _layout_problem(bids, "02", bold_files)
    assert message.startswith(f"{bad}: invalid JSON") and "\n" not in message
    assert "sub-02" in caplog.text and "left out of the index" in caplog.text
    assert t1w_file(layout, "02").name == "sub-02_T1w.nii.gz"  # its anatomy is still usable
    assert [p.name for p in bold_files(layout, "01")] == ["sub-01_task-rest_bold.nii.gz"]
    assert layout.get_metadata(str(bold_files(layout, "01")[0]))["RepetitionTime"] > 0


@pytest.mark.parametrize(
    ("make", "func", "pattern"),
    [
        (
            lambda a: a.with_suffix("").with_suffix(".json").write_text("[]"),
            t1w_file,
            "not a JSON object",
        ),
        (lambda a: (a.unlink(), os.symlink(a.parent / "gone", a)), t1w_file, "broken symbolic"),
        (
            lambda a: _patch(a, {DIM: _dims(20000, 20000, 20000)}),
            t1w_file,
            r"declares 20000×20000×20000",
        ),
        (
            lambda a: (a.parents[1] / "func" / "sub-02_task-rest_bold.json").write_text(
                '{"RepetitionTime": 0}'
            ),
            bold_files,
            r"RepetitionTime must be a positive number",
        ),
        (
            lambda a: (a.parents[1] / "func" / "sub-02_task-rest_bold.nii.gz").write_bytes(
                (a.parents[1] / "func" / "sub-02_task-rest_bold.nii.gz").read_bytes()[:3000]
            ),
            bold_files,
            r"truncated",
        ),
    ],
    ids=["T1w sidecar not an object", "broken T1w symlink", "huge T1w header", "TR 0", "BOLD cut"],
)
def test_an_unusable_file_of_one_subject_is_reported_by_name(bids, make, func, pattern):
    import re

    make(bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    layout, message = _layout_problem(bids, "02", func)
    assert re.search(pattern, message) and "sub-02" in message and "\n" not in message
    func(layout, "01")  # the other subject is untouched


def test_a_malformed_dataset_level_sidecar_stops_the_run_naming_it(bids):
    top = bids / "task-rest_bold.json"
    top.write_text("{oops")
    with pytest.raises(BIDSError, match="invalid JSON .* applies to every subject") as info:
        check_bids_dir(bids)
    assert str(info.value).startswith(str(top))


def test_non_bids_folders_and_unsafe_labels(tmp_path, tiny_bids):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "scan.nii.gz").write_bytes(b"x")
    with pytest.raises(BIDSError, match="dataset_description.json is missing"):
        check_bids_dir(tmp_path / "plain")
    layout = check_bids_dir(tiny_bids)
    for label in ("../x", "01/../../etc", "sub-01;rm"):
        with pytest.raises(ParticipantError) as info:
            select_participants(layout, [label])
        assert "\n" not in str(info.value)


# --- output and work folders --------------------------------------------------------------------


def test_output_folders_that_cannot_be_created_or_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"{blocker} is a file, not a folder") as info:
        check_writable_dir(blocker / "out", "output folder")
    assert str(info.value).startswith(str(blocker / "out"))
    with pytest.raises(OutputError, match="work folder is a file"):
        check_writable_dir(blocker, "work folder")
    made = check_writable_dir(tmp_path / "new" / "deep", "output folder")
    assert made.is_dir() and list(made.iterdir()) == []
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="cannot (create|write)"):
            check_writable_dir(locked / "out")


def test_the_cli_refuses_an_output_folder_it_cannot_create(tiny_bids, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([str(tiny_bids), str(blocker / "out"), "participant"]) == 2
    line = _cli_error(capsys)
    assert str(blocker / "out") in line and "not a folder" in line


# --- the group stage without a site column ------------------------------------------------------


def test_a_missing_site_column_is_named_with_how_to_fix_it(tmp_path):
    from pipeline.config import load_config
    from pipeline.gauge import HarmonizationError, run_harmonization
    from pipeline.group import _harmonize

    parts = pd.DataFrame({"age": [20, 30], "scanner": ["a", "b"]}, index=["01", "02"])
    result = _harmonize(tmp_path, ["01", "02"], parts, load_config(None))
    assert result["status"] == "skipped"
    assert "no 'site' column" in result["reason"] and "'scanner'" in result["reason"]
    assert (
        "gauge.site_column" in result["reason"] and "fewer than two sites" not in result["reason"]
    )
    config = load_config(None)
    with pytest.raises(HarmonizationError, match="no 'site' column"):
        run_harmonization(
            pd.DataFrame({"f": [1.0, 2.0]}, index=parts.index), parts, config.gauge, tmp_path, 0
        )


def test_site_column_option_names_the_site_column(tmp_path):
    """``gauge.site_column: SITE_ID`` (ABIDE's name) is read as the site."""
    from pipeline.bids import read_participants

    (tmp_path / "participants.tsv").write_text(
        "participant_id\tSITE_ID\tage\nsub-01\tNYU\t20\nsub-02\tUM_1\t30\n"
    )
    table = read_participants(tmp_path, site_column="SITE_ID")
    assert table.loc["02", "site"] == "UM_1" and "SITE_ID" in table
    assert "site" not in read_participants(tmp_path)


# --- seeded fuzz: header bytes, file tails, sidecar texts ---------------------------------------

#: (offset, struct format) of the header fields the fuzz mutates
_FIELDS = [
    (DIM, "<h"),
    (DIM + 2, "<h"),
    (DIM + 6, "<h"),
    (DIM + 8, "<h"),
    (DATATYPE, "<h"),
    (BITPIX, "<h"),
    (PIXDIM + 4, "<f"),
    (PIXDIM + 12, "<f"),
    (VOX_OFFSET, "<f"),
    (QFORM_CODE, "<h"),
    (SFORM_CODE, "<h"),
    (SROW_X, "<f"),
    (SROW_X + 20, "<f"),
    (SROW_X + 40, "<f"),
]
_VALUES = [0, -1, 1, 2, 3, 7, 16, 64, 255, 4096, 32767, -32768]
_FLOATS = [0.0, -1.0, 1e-12, 1e30, float("nan"), float("inf"), 2.0, 352.0, 353.0]


def _mutant(rng, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        offset, fmt = _FIELDS[int(rng.integers(len(_FIELDS)))]
        pool = _FLOATS if fmt.endswith("f") else _VALUES
        out[offset : offset + struct.calcsize(fmt)] = struct.pack(
            fmt, pool[int(rng.integers(len(pool)))]
        )
    if rng.random() < 0.3:  # cut the tail
        out = out[: int(rng.integers(0, len(out)))]
    return bytes(out)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_fuzzed_headers_and_tails_give_a_one_line_error_or_a_valid_image(tmp_path, ext):
    """The property: check_image returns a valid image or raises one line naming the file."""
    rng = np.random.default_rng(21)
    raw = gzip.decompress(_save(tmp_path, "seed.nii.gz", shape=(6, 7, 8)).read_bytes())
    refused = 0
    for i in range(60):
        path = tmp_path / f"fuzz{i}{ext}"
        data = _mutant(rng, raw)
        if ext.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
            if rng.random() < 0.2:  # cut the compressed stream
                data = data[: int(rng.integers(0, len(data)))]
        path.write_bytes(data)
        try:
            img = check_image(path, ndim=(3, 4))
        except ImageError as exc:
            _one_line(exc, path)
            refused += 1
        else:
            assert np.all(np.isfinite(np.asanyarray(img.dataobj)))
    assert refused > 20  # the fuzz does reach the checks


def test_fuzzed_sidecars_give_a_reason_or_none(tmp_path):
    rng = np.random.default_rng(21)
    text = json.dumps({"TaskName": "rest", "RepetitionTime": 2.0, "SliceTiming": [0, 0.5, 1.0]})
    path = tmp_path / "sub-01_task-rest_bold.json"
    for _ in range(100):
        cut = text[: int(rng.integers(0, len(text) + 1))]
        if rng.random() < 0.5:
            pos = int(rng.integers(0, len(cut) + 1))
            cut = cut[:pos] + "\x00,}]{\"'"[int(rng.integers(7))] + cut[pos:]
        path.write_text(cut)
        reason = sidecar_problem(path)
        assert reason is None or ("\n" not in reason and reason)


# --- end to end: one broken sidecar, the other subject and the group stage still run ------------


def test_a_broken_sidecar_costs_only_its_subject_end_to_end(bids, tmp_path, capsys):
    bad = bids / "sub-02" / "anat" / "sub-02_T1w.json"
    bad.write_text('{"Manufacturer": "Siemens",,}')
    config = tmp_path / "config.yaml"
    config.write_text("anat:\n  enabled: false\n")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err + captured.out
    assert (out / "logs" / "sub-01_participant.json").exists()
    failure = json.loads((out / "logs" / "sub-02_failure.json").read_text())
    assert failure["stage"] == "inputs" and failure["error"].startswith(f"{bad}: invalid JSON")
    assert "traceback" not in failure
    assert f"sub-02 failed (inputs): {bad}: invalid JSON" in captured.out
    assert not list(out.rglob("*.part-*"))  # no partial output
    assert main([str(bids), str(out), "group", "--config", str(config)]) == 1
    status = pd.read_csv(out / "group" / "participants_status.tsv", sep="\t", dtype=str)
    row = status.set_index("participant").loc["02"]
    assert row["status"] == "failed" and "sub-02_T1w.json: invalid JSON" in row["error"]
    assert status.set_index("participant").loc["01", "status"] == "ok"
    # a broken dataset-level sidecar is one line for everyone
    (bids / "task-rest_bold.json").write_text("{oops")
    capsys.readouterr()
    assert main([str(bids), str(out), "participant", "--config", str(config)]) == 2
    assert "task-rest_bold.json: invalid JSON" in _cli_error(capsys)


def test_user_errors_are_symprep_errors():
    for cls in (OutputError, ImageError, BIDSError, ParticipantError):
        assert issubclass(cls, SymprepError)
