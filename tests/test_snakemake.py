"""The Snakemake DAG: lint-clean, and a tiny end-to-end run (1 site × 2 subjects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=1200)


def _config(tmp_path: Path, bids: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"bids_dir: {bids}\noutput_dir: {tmp_path / 'out'}\nwork_dir: {tmp_path / 'work'}\n"
                    f"seed: 0\nnprocs: 1\n{extra}")
    return path


def test_snakefmt_and_lint(tiny_bids, tmp_path):
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflows"], cwd=ROOT,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr
    lint = _snakemake("--lint", "--configfile", str(_config(tmp_path, tiny_bids)))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr


def test_bad_config_stops_before_any_job(tiny_bids, tmp_path):
    config = _config(tmp_path, tiny_bids, "anat:\n  resolutoin: 2\n")
    proc = _snakemake("--cores", "1", "--configfile", str(config))
    assert proc.returncode != 0
    assert "unknown key 'anat.resolutoin'" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path):
    from pipeline.data.demo import DemoSpec, make_demo_dataset

    bids = make_demo_dataset(tmp_path / "bids", DemoSpec(sites=1, subjects_per_site=2, resolution=4.0,
                                                         bold_resolution=6.0, n_volumes=12, seed=1),
                             progress=False)
    config = _config(tmp_path, bids)
    proc = _snakemake("--cores", "2", "--configfile", str(config), "--keep-going")
    out = tmp_path / "out"
    logs = "\n".join(p.read_text()[-3000:] for p in (out / "logs").glob("*.log")) if out.exists() else ""
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
    again = _snakemake("--cores", "2", "--configfile", str(config))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
