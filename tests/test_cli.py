"""The BIDS-App command line: clean one-line errors, per-subject failure isolation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pipeline import __version__
from pipeline.cli import main
from pipeline.errors import SymprepError


def _no_anat_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("anat:\n  enabled: false\n")
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_missing_input_dir_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            str(tmp_path / "nope"),
            str(tmp_path / "out"),
            "participant",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"symprep: error: {tmp_path / 'nope'}: input directory does not exist"
    )


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        (lambda d: d.mkdir(), "dataset_description.json is missing"),
        (
            lambda d: (d.mkdir(), (d / "dataset_description.json").write_text("{oops")),
            "invalid JSON",
        ),
        (
            lambda d: (
                d.mkdir(),
                (d / "dataset_description.json").write_text(
                    '{"Name": "x", "BIDSVersion": "1.9.0"}'
                ),
            ),
            "dataset has no subjects",
        ),
        (lambda d: d.write_text("a file"), "not a directory"),
    ],
)
def test_non_bids_inputs(tmp_path, capsys, setup, pattern):
    bids = tmp_path / "bids"
    setup(bids)
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == 2
    line = _error_line(capsys)
    assert str(bids) in line and pattern in line


@pytest.mark.parametrize(
    ("label", "pattern"), [("07", "sub-07 not found"), ("../x", "invalid sub label '../x'")]
)
def test_bad_participant_labels(tiny_bids, tmp_path, capsys, label, pattern):
    code = main(
        [str(tiny_bids), str(tmp_path / "out"), "participant", "--participant-label", label]
    )
    assert code == 2
    assert pattern in _error_line(capsys)


def test_invalid_bids_file_names_are_reported(tiny_bids, tmp_path, capsys):
    bids = shutil.copytree(tiny_bids, tmp_path / "bids")
    (bids / "sub-01" / "anat" / "sub-01_T1w_copy.nii.gz").write_bytes(b"x")
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == 2
    assert "sub-01_T1w_copy.nii.gz' is not valid BIDS" in _error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(SymprepError):
        main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant", "--debug"])


def test_one_bad_subject_does_not_stop_the_others(tiny_bids, tmp_path, capsys):
    bids = shutil.copytree(tiny_bids, tmp_path / "bids")
    t1w = bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    t1w.write_bytes(t1w.read_bytes()[:2000])  # truncated download
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--config", _no_anat_config(tmp_path)])
    assert code == 1
    assert (out / "logs" / "sub-01_participant.json").exists()
    failure = json.loads((out / "logs" / "sub-02_failure.json").read_text())
    assert failure["stage"] == "inputs" and "sub-02_T1w.nii.gz" in failure["error"]
    assert "truncated" in failure["error"] or "cannot read" in failure["error"]
    assert "traceback" not in failure  # a user error, not a bug
    assert "sub-02 failed (inputs)" in capsys.readouterr().out
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0] == {
        **description["GeneratedBy"][0],
        "Name": "symprep",
        "Version": __version__,
    }
    # fixing the input and rerunning clears the failure record
    shutil.copy(tiny_bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz", t1w)
    assert (
        main(
            [
                str(bids),
                str(out),
                "participant",
                "--participant-label",
                "sub-02",
                "--config",
                _no_anat_config(tmp_path),
            ]
        )
        == 0
    )
    assert not (out / "logs" / "sub-02_failure.json").exists()


def test_group_level_lists_left_out_subjects(tiny_bids, tmp_path):
    out = tmp_path / "out"
    config = _no_anat_config(tmp_path)
    assert (
        main(
            [
                str(tiny_bids),
                str(out),
                "participant",
                "--participant-label",
                "01",
                "--config",
                config,
            ]
        )
        == 0
    )
    assert main([str(tiny_bids), str(out), "group", "--config", config]) == 1
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["left_out"] == ["02"] and summary["n_usable"] == 1


def test_demo_data_rejects_bad_sizes(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--sites", "0"]) == 2
    assert "--sites must be at least 1" in _error_line(capsys)


@pytest.mark.slow
def test_subject_without_bold_still_gets_anatomical_outputs(tiny_bids, tmp_path):
    bids = shutil.copytree(tiny_bids, tmp_path / "bids")
    shutil.rmtree(bids / "sub-01" / "func")
    config = tmp_path / "cheap.yaml"
    # the cheapest registration that still passes QC on the tiny data (as the audit test uses)
    config.write_text(
        "anat:\n  registration_voxel_mm: 6.0\n  pose_n_rotations: 200\n  pose_fine_mm: 6.0\n"
        "  pose_n_refine: 1\n  rigid_iterations: [10, 5]\n  affine_iterations: [10, 5]\n"
        "  affine_shrink_factors: [2, 1]\n  affine_smoothing_sigmas: [1.0, 0.0]\n  syn: false\n"
        "  n4: false\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            str(bids),
            str(out),
            "participant",
            "--participant-label",
            "01",
            "--config",
            str(config),
            "--nprocs",
            "1",
        ]
    )
    assert code == 0
    record = json.loads((out / "logs" / "sub-01_participant.json").read_text())
    assert any(key.startswith("anat.") for key in record["outputs"])
    assert not any(key.startswith("func.") for key in record["outputs"])
    assert (
        out / "sub-01" / "anat" / "sub-01_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz"
    ).exists()
    assert not (out / "sub-01" / "func").exists()
    assert (out / "sub-01.html").exists()
