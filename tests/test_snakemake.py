"""The Snakemake DAG: lint-clean, and a tiny end-to-end run (1 site × 2 subjects)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _checksums import derivative_checksums, differing

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
    )


#: ANTs' own SyN iterations: these tests are about the DAG, resume and bytes, not registration
#: quality (tested in tests/anat and benchmarks/), and symprep's default doubles the time
QUICK_SYN = "anat:\n  syn_iterations: [40, 20, 0]\n"


def _config(tmp_path: Path, bids: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    anat = "" if extra.startswith("anat:") else QUICK_SYN
    path.write_text(
        f"bids_dir: {bids}\noutput_dir: {tmp_path / 'out'}\nwork_dir: {tmp_path / 'work'}\n"
        f"seed: 0\nnprocs: 1\n{anat}{extra}"
    )
    return path


def test_snakefmt_and_lint(tiny_bids, tmp_path):
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflows"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stderr
    lint = _snakemake("--lint", "--configfile", str(_config(tmp_path, tiny_bids)))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr


def test_bad_config_stops_before_any_job(tiny_bids, tmp_path):
    config = _config(tmp_path, tiny_bids, "anat:\n  resolutoin: 2\n")
    proc = _snakemake("--cores", "1", "--configfile", str(config))
    assert proc.returncode != 0
    assert "unknown key 'anat.resolutoin'" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny demo (1 site × 2 subjects) through the whole workflow, once for this module."""
    from pipeline.data.demo import DemoSpec, make_demo_dataset

    tmp_path = tmp_path_factory.mktemp("tiny_run")
    bids = make_demo_dataset(
        tmp_path / "bids",
        DemoSpec(
            sites=1, subjects_per_site=2, resolution=4.0, bold_resolution=6.0, n_volumes=12, seed=1
        ),
        progress=False,
    )
    config = _config(tmp_path, bids)
    proc = _snakemake(
        "--cores", "2", "--configfile", str(config), "--keep-going", "--directory", str(tmp_path)
    )
    return tmp_path, bids, config, proc


@pytest.mark.slow
def test_tiny_end_to_end_run(tiny_run):
    tmp_path, bids, config, proc = tiny_run
    out = tmp_path / "out"
    logs = (
        "\n".join(p.read_text()[-3000:] for p in (out / "logs").glob("*.log"))
        if out.exists()
        else ""
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + logs
    for sub in ("01", "02"):
        record = json.loads((out / "logs" / f"sub-{sub}_participant.json").read_text())
        assert record["status"] == "ok"
        anat = out / f"sub-{sub}" / "anat"
        assert (anat / f"sub-{sub}_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz").exists()
        assert (anat / f"sub-{sub}_desc-brain_mask.nii.gz").exists()
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["n_usable"] == 2 and summary["left_out"] == []
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    # a rerun has nothing to do
    again = _snakemake("--cores", "2", "--configfile", str(config), "--directory", str(tmp_path))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def _wait_for(condition, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail("the workflow ended before it could be killed mid-way")
        if time.monotonic() > deadline:
            pytest.fail("the workflow did not reach the point to kill it")
        time.sleep(0.5)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_and_matches_a_clean_run(tiny_run, tmp_path):
    """SIGKILL the whole workflow while the second subject runs; the rerun redoes only that
    subject and the group, leaves no partial file, and its derivatives are byte-identical to an
    uninterrupted run with the same seed."""
    clean_dir, bids, _, clean = tiny_run
    assert clean.returncode == 0, clean.stderr[-3000:]
    config, out = _config(tmp_path, bids), tmp_path / "out"
    args = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config),
    ]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [*args, "--cores", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = {s: out / "logs" / f"sub-{s}_participant.json" for s in ("01", "02")}

            def one_subject_done_other_midway() -> bool:
                done = [s for s, p in status.items() if p.exists()]
                if len(done) != 1:
                    return False
                other = "02" if done == ["01"] else "01"
                return any((out / f"sub-{other}" / "anat").glob("*.nii.gz"))

            _wait_for(one_subject_done_other_midway, proc, timeout=900)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
            proc.wait()
    (done,) = [s for s, p in status.items() if p.exists()]
    killed = "02" if done == "01" else "01"
    done_mtime = status[done].stat().st_mtime_ns
    assert not status[killed].exists()
    # the documented recovery: unlock (a killed Snakemake keeps its lock), then run again
    assert (
        _snakemake("--unlock", "--configfile", str(config), "--directory", str(tmp_path)).returncode
        == 0
    )
    rerun = subprocess.run(
        [*args, "--cores", "2", "--rerun-incomplete"], capture_output=True, text=True, timeout=1200
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # only the unfinished subject and the group were run again
    jobs = dict(
        re.findall(r"^(\w+)\s+(\d+)$", rerun.stderr.split("Job stats:")[1].split("total")[0], re.M)
    )
    assert jobs.get("participant") == "1" and jobs.get("group") == "1", jobs
    assert status[done].stat().st_mtime_ns == done_mtime
    assert status[killed].exists()
    assert [p for p in out.rglob("*") if ".part-" in p.name] == []
    # same seed, same bytes: the killed-and-resumed run equals the uninterrupted one
    resumed, reference = derivative_checksums(out), derivative_checksums(clean_dir / "out")
    assert len(reference) > 50
    assert differing(resumed, reference) == []


def _job_counts(text: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table."""
    table = text.split("Job stats:")[1].split("total")[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


GROUP_MODELS_AND_AUDIT = (
    "models:\n  enabled: true\n  runs:\n    steerable: {}\n"
    "    vae: {hparams: {encoder: octahedral}}\n"
    "audit:\n  enabled: true\n  n_transforms: 1\n  reference: outputs\n"
)


def test_group_dag_trains_the_model_runs_and_audits_when_enabled(tiny_bids, tmp_path):
    """With models.enabled and audit.enabled the group DAG has one train job per models.runs
    entry and one audit job (the first subject by default), and the group job waits for them
    (a dry run: nothing is computed; tiny_run above is the DAG without them)."""
    config = _config(tmp_path, tiny_bids, GROUP_MODELS_AND_AUDIT)
    proc = _snakemake("-n", "-p", "--configfile", str(config), "--directory", str(tmp_path))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    jobs = _job_counts(text)
    assert jobs == {"all": 1, "audit": 1, "group": 1, "participant": 2, "train": 2}, jobs
    out = tmp_path / "out"
    for run in ("steerable", "vae"):
        assert f"--run {run} " in text
        assert str(out / "group" / "models" / run / "metrics.json") in text
    assert str(out / "sub-01" / "audit" / "sub-01_desc-invariance_residuals.tsv") in text
    # the group job is the last: its inputs include the models and the audit
    group_job = text.split("rule group:")[1].split("\n\n")[0]
    assert "metrics.json" in group_job and "invariance_residuals.tsv" in group_job, group_job
