"""The BIDS-App command line: clean one-line errors, per-subject failure isolation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from _anat_options import CHEAP_ANAT

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
    config.write_text(yaml.safe_dump({"anat": CHEAP_ANAT}))
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


# --------------------------------------------------------------------------- fMRIPrep-shaped flags
@pytest.fixture
def fresh_execution(monkeypatch):
    """Run-time settings and thread variables restored after the test."""
    import dataclasses

    from pipeline.workflows import execution

    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_MAX_THREADS",
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
        "SYMPREP_MEM_MB",
    ):
        monkeypatch.setenv(var, "2")
    yield execution.EXECUTION
    execution.configure_execution(**dataclasses.asdict(execution.ExecutionSettings()))


def _parse(*flags: str):
    from pipeline.cli import build_bids_app_parser

    return build_bids_app_parser().parse_args(["bids", "out", "participant", *flags])


@pytest.mark.parametrize(
    ("value", "mb"),
    [("8000", 8000), ("8000MB", 8000), ("8GB", 8000), ("8G", 8000), ("8g", 8000),
     ("1.5T", 1.5e6), ("512K", 0.512), ("1GiB", 1073.741824)],
)  # fmt: skip
def test_mem_is_megabytes_unless_a_unit_says_otherwise(value, mb):
    args = _parse("--mem", value)
    assert args.mem_mb == pytest.approx(mb)
    assert args.mem_gb is None  # --mem no longer prefix-matches --mem-gb


@pytest.mark.parametrize("flags", [["--mem", "lots"], ["--mem", "0"], ["--mem", "8X"]])
def test_bad_memory_is_a_usage_error(flags, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(*flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --mem" in err and ("invalid memory" in err or "must be positive" in err)


@pytest.mark.parametrize(
    "argv",
    [
        ["bids", "out", "participant", "--mem-g", "8"],  # abbreviations of --mem-gb …
        ["bids", "out", "participant", "--omp", "2"],  # … and --omp-nthreads are not accepted
        ["bids", "out", "participant", "--stop-on", "x"],
        ["demo-data", "d", "--site", "2"],  # subcommands too (--sites)
    ],
)
def test_no_abbreviated_options(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_thread_and_seed_aliases():
    for flag in ("--nthreads", "--n_cpus", "--n-cpus", "--nprocs"):
        assert _parse(flag, "3").nthreads == 3
    args = _parse("--nthreads", "4", "--omp-nthreads", "2", "--random-seed", "7")
    assert (args.nthreads, args.omp_nthreads, args.seed) == (4, 2, 7)
    assert _parse("--seed", "5").seed == 5
    args = _parse("--low-mem", "--stop-on-first-crash", "--boilerplate-only")
    assert args.low_mem and args.stop_on_first_crash and args.boilerplate_only
    with pytest.raises(SystemExit):
        _parse("--nthreads", "0")


def test_flags_reach_the_participant_run(tiny_bids, tmp_path, monkeypatch, fresh_execution):
    import os

    import pipeline.workflows.participant as participant

    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"task": "rest", "run": [1, 2]}, "t1w": {"run": None}}))
    seen = {}

    def fake_run_participants(layout, subjects, output_dir, work_dir, config, nprocs):
        seen.update(nprocs=nprocs, config=config, settings=dict(vars(fresh_execution)))
        seen["omp_env"] = os.environ["OMP_NUM_THREADS"]
        return []

    monkeypatch.setattr(participant, "run_participants", fake_run_participants)
    argv = [str(tiny_bids), str(tmp_path / "out"), "participant", "--nthreads", "3"]
    argv += ["--omp-nthreads", "2", "--mem", "6GB", "--low-mem", "--stop-on-first-crash"]
    argv += ["--bids-filter-file", str(filters), "--random-seed", "4"]
    assert main(argv) == 0
    assert seen["nprocs"] == 3 and seen["omp_env"] == "2"
    assert seen["config"].mem_gb == pytest.approx(6.0) and seen["config"].seed == 4
    settings = seen["settings"]
    assert settings["memory_gb"] == pytest.approx(6.0) and settings["omp_nthreads"] == 2
    assert settings["low_mem"] and settings["stop_on_first_crash"]
    assert settings["bids_filters"] == {
        "bold": {"task": "rest", "run": [1, 2]},
        "t1w": {"run": None},
    }


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, "BIDS filter file does not exist"),
        ("{oops", "invalid JSON in the BIDS filter file (line 1)"),
        ("[1, 2]", "must be a JSON object of input kinds"),
        ('{"bold": "rest"}', "filters of 'bold' must be a JSON object"),
        ('{"bold": {"sesion": "1"}}', "unknown BIDS entity 'sesion'"),
        ('{"bold": {"run": {"a": 1}}}', "filter bold.run must be"),
    ],
)
def test_bad_bids_filter_file_is_one_line(tiny_bids, tmp_path, capsys, fresh_execution, content,
                                          pattern):  # fmt: skip
    path = tmp_path / "filters.json"
    if content is not None:
        path.write_text(content)
    code = main([str(tiny_bids), str(tmp_path / "out"), "participant", "--bids-filter-file",
                 str(path)])  # fmt: skip
    assert code == 2
    line = _error_line(capsys)
    assert str(path) in line and pattern in line


def test_nipype_multiproc_is_given_the_memory_limit(tiny_bids, tmp_path, monkeypatch,
                                                    fresh_execution):  # fmt: skip
    """``--mem 3000`` reaches Nipype's MultiProc as ``memory_gb=3`` with ``--nthreads`` processes."""
    from nipype.pipeline import engine as pe

    calls = []

    def fake_run(self, plugin=None, plugin_args=None, updatehash=False):
        calls.append((self.name, plugin, dict(plugin_args or {}), dict(self.config["execution"])))
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(pe.Workflow, "run", fake_run)
    out = tmp_path / "out"
    argv = [str(tiny_bids), str(out), "participant", "--participant-label", "01"]
    assert main([*argv, "--nthreads", "2", "--mem", "3000"]) == 1  # the stopped stage fails
    name, plugin, args, execution = calls[0]
    assert plugin == "MultiProc"
    assert args["n_procs"] == 2 and args["memory_gb"] == pytest.approx(3.0)
    assert execution["stop_on_first_crash"] == "false"
    failure = json.loads((out / "logs" / "sub-01_failure.json").read_text())
    assert "stopped by the test" in failure["error"]
    # the deprecated --mem-gb still works; --stop-on-first-crash reaches Nipype's configuration
    calls.clear()
    assert main([*argv, "--nthreads", "2", "--mem-gb", "1.5", "--stop-on-first-crash"]) == 1
    assert calls[0][2]["memory_gb"] == pytest.approx(1.5)
    assert calls[0][3]["stop_on_first_crash"] == "true"
    # --low-mem: one node at a time, whatever --nthreads says
    calls.clear()
    assert main([*argv, "--nthreads", "2", "--mem", "3000", "--low-mem"]) == 1
    assert calls[0][1] == "Linear"
    # one process: Nipype's Linear plugin (nothing runs side by side)
    calls.clear()
    assert main([*argv, "--nthreads", "1", "--mem", "3000"]) == 1
    assert calls[0][1] == "Linear"


def test_run_workflow_reports_the_crashed_node(tmp_path, fresh_execution):
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from pipeline.workflows.execution import run_workflow

    def boom(x):
        raise ValueError(f"planted failure {x}")

    wf = pe.Workflow(name="wf", base_dir=str(tmp_path / "work"))
    node = pe.Node(Function(input_names=["x"], output_names=["y"], function=boom), name="boom")
    node.inputs.x = 3
    wf.add_nodes([node])
    with pytest.raises(SymprepError) as info:
        run_workflow(wf, work_dir=tmp_path / "work", nprocs=1, what="sub-01: test workflow")
    message = str(info.value)
    assert message.startswith("sub-01: test workflow failed (node wf.boom: ")
    assert "ValueError: planted failure 3" in message and "\n" not in message


def test_multiproc_runs_under_the_memory_limit(tmp_path, fresh_execution):
    """A real MultiProc run with ``memory_gb``: Nipype accepts the arguments and runs the nodes."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from pipeline.workflows.execution import configure_execution, plugin_settings, run_workflow

    def double(x):
        return 2 * x

    configure_execution(memory_gb=0.5)
    assert plugin_settings(2) == (
        "MultiProc",
        {"n_procs": 2, "raise_insufficient": False, "memory_gb": 0.5},
    )
    wf = pe.Workflow(name="wf", base_dir=str(tmp_path / "work"))
    nodes = []
    for i in range(2):
        node = pe.Node(
            Function(input_names=["x"], output_names=["y"], function=double),
            name=f"n{i}",
            mem_gb=0.2,
        )
        node.inputs.x = i + 1
        nodes.append(node)
    wf.add_nodes(nodes)
    run_workflow(wf, work_dir=tmp_path / "work", nprocs=2, what="test")
    assert len(list((tmp_path / "work" / "wf").glob("n*/result_n*.pklz"))) == 2


@pytest.mark.parametrize(("verbose", "level"), [(0, "WARNING"), (1, "INFO"), (2, "DEBUG")])
def test_verbosity_reaches_nipype(verbose, level):
    import logging

    import nipype

    from pipeline.cli import setup_logging
    from pipeline.workflows.participant import _tame_nipype_logging

    try:
        setup_logging(verbose)
        _tame_nipype_logging()
        assert logging.getLevelName(logging.getLogger("nipype.workflow").level) == level
        assert logging.getLevelName(logging.getLogger("nipype.interface").level) == level
        assert nipype.config.get("logging", "workflow_level") == level
        assert logging.getLogger("pipeline").isEnabledFor(logging.INFO)
        assert logging.getLogger("pipeline").isEnabledFor(logging.DEBUG) == (verbose >= 2)
    finally:
        setup_logging(0)
        _tame_nipype_logging()


def test_boilerplate_only_writes_the_methods_and_runs_nothing(tiny_bids, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            str(tiny_bids),
            str(out),
            "participant",
            "--boilerplate-only",
            "-w",
            str(tmp_path / "work"),
            "--skip-bids-validation",
        ]
    )
    assert code == 0
    text = (out / "logs" / "CITATION.md").read_text()
    assert "Atropos" in text and "prior weight 0.1" in text and "## References" in text
    assert "[6] Avants BB, Tustison NJ" in text  # the Atropos paper, numbered as cited
    assert not list(out.glob("sub-*"))  # nothing was processed
    assert list((out / "logs").glob("config-participant-*.yaml"))  # the resolved configuration
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["CodeURL"].startswith("https://")
    assert description["SourceDatasets"][0]["URI"] == "bids:raw:"
    assert (out / ".bidsignore").read_text().startswith("logs/")


def test_output_spaces_set_the_grid_or_say_what_is_missing(
    tiny_bids, tmp_path, monkeypatch, capsys
):
    """The shipped template at either resolution; a TemplateFlow template when the cache holds
    every file it needs (registration to it: tests/workflows/test_sessions_runs.py); one line
    naming the missing template or file otherwise."""
    import _templateflow

    import pipeline.workflows.participant as participant

    seen = {}
    monkeypatch.setattr(participant, "run_participants", lambda *a: seen.update(config=a[4]) or [])
    base = [str(tiny_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert main([*base, "--output-spaces", "MNI152NLin2009aSym:res-1"]) == 0
    assert seen["config"].anat.resolution == 1
    assert seen["config"].anat.template == "MNI152NLin2009aSym"
    capsys.readouterr()
    home = tmp_path / "tf"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    assert main([*base, "--output-spaces", "MNI152NLin6Asym:res-2"]) == 2
    line = _error_line(capsys)
    assert "template 'MNI152NLin6Asym' is neither shipped" in line and str(home) in line
    (home / "tpl-MNI152NLin6Asym").mkdir(parents=True)
    assert main([*base, "--output-spaces", "MNI152NLin6Asym"]) == 2
    line = _error_line(capsys)
    assert "lacks tpl-MNI152NLin6Asym_res-02_T1w.nii.gz" in line, line
    assert main([*base, "--output-spaces", "MNI152NLin2009aSym:res-3"]) == 2
    assert "res-3" in _error_line(capsys)
    # a cached template with its files: accepted, and the run registers to it
    _templateflow.cached_template(home)
    assert main([*base, "--output-spaces", f"{_templateflow.NAME}:res-2"]) == 0
    assert seen["config"].anat.template == _templateflow.NAME
    assert seen["config"].anat.resolution == 2
    capsys.readouterr()
    assert main([*base, "--output-spaces", f"{_templateflow.NAME}:res-1"]) == 2
    assert "lacks" in _error_line(capsys)
    # one template per run
    args = ["--output-spaces", "MNI152NLin2009aSym", f"{_templateflow.NAME}:res-2"]
    assert main([*base, *args]) == 2
    assert "one template and resolution per run" in _error_line(capsys)


def test_mem_sets_the_local_dask_workers_limits():
    """The group stage's local dask workers share ``--mem`` (a quarter kept for the group process);
    without ``--mem`` the configured limit stands, and SLURM workers keep their own."""
    from pipeline.config import load_config
    from pipeline.group import _dask_options

    config = load_config(None, mem_gb=8.0, dask={"n_workers": 2})
    assert _dask_options(config).memory_limit == "3000MB"
    assert _dask_options(load_config(None, dask={"n_workers": 2})).memory_limit == "2GB"
    slurm = load_config(None, mem_gb=8.0, dask={"scheduler": "slurm"})
    assert _dask_options(slurm).memory_limit == "2GB"


def test_a_subject_over_the_memory_limit_fails_cleanly(tiny_bids, tmp_path):
    """``--mem`` is enforced (RLIMIT_DATA): a subject needing more fails with one line naming the
    limit and the node, no traceback, no partial derivatives; the limit is lifted afterwards."""
    import resource
    import subprocess
    import sys

    before = resource.getrlimit(resource.RLIMIT_DATA)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pipeline", str(tiny_bids), str(out), "participant"]
    argv += ["--participant-label", "01", "--mem", "30", "--nthreads", "1"]
    argv += ["-w", str(tmp_path / "work")]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr + run.stdout
    line = next(x for x in run.stdout.splitlines() if x.startswith("symprep: sub-01 failed"))
    assert "ran out of memory under the --mem limit of 30 MB" in line and "node " in line
    failure = json.loads((out / "logs" / "sub-01_failure.json").read_text())
    assert failure["status"] == "failed" and "traceback" not in failure
    assert not list((out / "sub-01").rglob("*.nii.gz"))  # nothing partial
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
