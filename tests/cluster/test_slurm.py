"""The tiny demo through a real SLURM (``make test-cluster`` starts one on localhost).

Runs the workflow locally and through ``--profile configs/profiles/slurm``, checks that the jobs
went through SLURM (job ids in the executor's logs) and that both runs give byte-identical
derivatives; starts the group stage's dask cluster as SLURM jobs (dask-jobqueue).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _checksums import derivative_checksums, differing

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs SLURM (make test-cluster)"),
]


def _run(workdir: Path, bids: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(
        f"bids_dir: {bids}\noutput_dir: {out}\nwork_dir: {workdir / 'work'}\nseed: 0\nnprocs: 1\n"
    )
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def test_demo_through_slurm_matches_local_run(tmp_path):
    from pipeline.data.demo import DemoSpec, make_demo_dataset

    bids = make_demo_dataset(
        tmp_path / "bids",
        DemoSpec(
            sites=1, subjects_per_site=2, resolution=4.0, bold_resolution=6.0, n_volumes=12, seed=2
        ),
        progress=False,
    )
    local = _run(tmp_path / "local", bids, tmp_path / "out-local", "--cores", "2")
    assert local.returncode == 0, local.stderr[-3000:]
    slurm = _run(
        tmp_path / "slurm",
        bids,
        tmp_path / "out-slurm",
        "--profile",
        str(ROOT / "configs" / "profiles" / "slurm"),
        "--jobs",
        "2",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--default-resources",
        "slurm_partition=debug",
        "mem_mb=2000",
        "runtime=30",
    )
    assert slurm.returncode == 0, slurm.stderr[-3000:]
    # every rule job was submitted with sbatch: job ids in the executor's log folder
    logs = list((tmp_path / "slurm" / ".snakemake" / "slurm_logs").rglob("*.log"))
    job_ids = {m.group(0) for p in logs for m in re.finditer(r"\d+(?=\.log$)", p.name)}
    assert len(job_ids) >= 3, [p.name for p in logs]  # two participant jobs and the group job
    assert re.search(r"SLURM run ID|Job \d+ has been submitted with SLURM jobid \d+", slurm.stderr)
    # the same derivatives as the local run, byte for byte (same seed and ITK thread count)
    local_sums = derivative_checksums(tmp_path / "out-local")
    assert len(local_sums) > 50
    assert differing(local_sums, derivative_checksums(tmp_path / "out-slurm")) == []


def test_dask_workers_run_as_slurm_jobs(tmp_path):
    """The group stage's dask cluster with ``dask.scheduler: slurm``: workers are SLURM jobs."""
    import dask.array as da

    from pipeline.config import validate_config
    from pipeline.dask_cluster import dask_client

    config = validate_config(
        {
            "dask": {
                "scheduler": "slurm",
                "slurm": {
                    "queue": "debug",
                    "cores": 1,
                    "memory": "1GB",
                    "walltime": "00:10:00",
                    "jobs": 2,
                    "scheduler_host": "127.0.0.1",
                    "log_directory": str(tmp_path / "dask-logs"),
                    "wait_timeout": 120,
                },
            }
        }
    )
    with dask_client(config.dask) as client:
        client.wait_for_workers(2, timeout=120)
        job_ids = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        assert None not in job_ids and len(job_ids) == 2, job_ids
        queued = subprocess.run(
            ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert job_ids <= set(queued)
        x = da.arange(2_000_000, chunks=250_000, dtype=np.float64)
        assert float(x.sum().compute()) == 1_999_999 * 2_000_000 / 2
    # closing the cluster cancels its jobs
    for _ in range(30):
        queued = subprocess.run(
            ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True
        ).stdout.split()
        if not job_ids & set(queued):
            break
        time.sleep(1)
    assert not job_ids & set(queued)
