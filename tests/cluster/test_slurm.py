"""The tiny demo through a real SLURM (``make test-cluster`` starts one on localhost).

Runs the workflow locally and through ``--profile configs/profiles/slurm``, checks that the jobs
went through SLURM (job ids in the executor's logs) and that both runs give byte-identical
derivatives; trains a tiny model through the profile's GPU request, which SLURM grants from the
test node's fake GPU (``slurm_up.sh``); starts the group stage's dask cluster as SLURM jobs
(dask-jobqueue).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _checksums import derivative_checksums, differing

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs SLURM (make test-cluster)"),
]


def _run(
    workdir: Path, bids: Path, out: Path, *extra: str, models: str = ""
) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(
        f"bids_dir: {bids}\noutput_dir: {out}\nwork_dir: {workdir / 'work'}\nseed: 0\nnprocs: 1\n"
        + models
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


#: the SLURM options of the tests: the test node's partition for every rule but train, small jobs
SLURM_OPTIONS = (
    "--jobs",
    "2",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--default-resources",
    "slurm_partition=debug",
    "mem_mb=2000",
    "runtime=30",
)

#: a model that trains in seconds on CPU (tests/models/test_train_command.py)
TINY_MODEL = (
    "models:\n  enabled: true\n  model: cnn\n  epochs: 1\n  downsample: 2\n  device: cpu\n"
    "  hparams: {widths: [2, 4]}\n  progress: false\n"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The tiny demo dataset, and its workflow run through ``--profile configs/profiles/slurm``."""
    from pipeline.data.demo import DemoSpec, make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    bids = make_demo_dataset(
        root / "bids",
        DemoSpec(
            sites=1, subjects_per_site=2, resolution=4.0, bold_resolution=6.0, n_volumes=12, seed=2
        ),
        progress=False,
    )
    slurm = _run(
        root / "slurm",
        bids,
        root / "out-slurm",
        "--profile",
        str(ROOT / "configs" / "profiles" / "slurm"),
        *SLURM_OPTIONS,
    )
    assert slurm.returncode == 0, slurm.stderr[-3000:]
    return root, bids, slurm


def test_demo_through_slurm_matches_local_run(demo):
    root, bids, slurm = demo
    local = _run(root / "local", bids, root / "out-local", "--cores", "2")
    assert local.returncode == 0, local.stderr[-3000:]
    # every rule job was submitted with sbatch: job ids in the executor's log folder
    logs = list((root / "slurm" / ".snakemake" / "slurm_logs").rglob("*.log"))
    job_ids = {m.group(0) for p in logs for m in re.finditer(r"\d+(?=\.log$)", p.name)}
    assert len(job_ids) >= 3, [p.name for p in logs]  # two participant jobs and the group job
    assert re.search(r"SLURM run ID|Job \d+ has been submitted with SLURM jobid \d+", slurm.stderr)
    # the same derivatives as the local run, byte for byte (same seed and ITK thread count); the
    # model that the GPU test below trains in the SLURM output only is not compared
    local_sums = derivative_checksums(root / "out-local")
    assert len(local_sums) > 50
    slurm_sums = {
        k: v
        for k, v in derivative_checksums(root / "out-slurm").items()
        if not k.startswith("group/models/")
    }
    assert differing(local_sums, slurm_sums) == []


def _scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job -d``'s fields (completed jobs stay listed for MinJobAge=300 s)."""
    text = subprocess.run(
        ["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", text))


def test_train_rule_gets_a_gpu_through_slurm(demo, tmp_path):
    """The profile's GPU request for the train rule (the rule's ``gpu=1``, partition ``gpu``)
    reaches sbatch, which accepts it: SLURM allocates the test node's (fake) GPU to the job."""
    root, bids, _ = demo
    # the profile as it is, except the train job's memory (16 GB on a real run) for small CI nodes
    profile = yaml.safe_load((ROOT / "configs" / "profiles" / "slurm" / "config.yaml").read_text())
    train = profile["set-resources"]["train"]
    assert train["slurm_partition"] == "gpu" and "slurm_extra" not in train
    train["mem_mb"] = 2000
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    # the participant and group outputs of the demo's SLURM run exist: only train runs now
    run = _run(
        root / "slurm",
        bids,
        root / "out-slurm",
        "--profile",
        str(tmp_path / "profile"),
        *SLURM_OPTIONS,
        "--verbose",  # the plugin logs its sbatch call at debug level
        models=TINY_MODEL,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    submitted = re.findall(
        r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", run.stderr
    )
    # the train job, then the group job again (its report shows the models it waits for)
    train_jobs = [job for job, log in submitted if "/rule_train/" in log]
    assert len(train_jobs) == 1, submitted
    assert [log for _, log in submitted if "/rule_train/" not in log] == [
        log for _, log in submitted if "/rule_group/" in log
    ], submitted
    job_id = train_jobs[0]
    # the request reached sbatch as the plugin's own option, not through slurm_extra; the group
    # job asked for no GPU
    calls = re.findall(r"sbatch call: (sbatch .*)", run.stderr)
    train_calls = [c for c in calls if "rule_train" in c]
    assert len(train_calls) == 1, calls
    assert "--gpus=1" in train_calls[0].split() and "--gres" not in train_calls[0], calls
    assert all("--gpus" not in c for c in calls if c not in train_calls), calls
    # ... and SLURM accepted it: the job asked for a GPU, got the node's GPU and completed
    job = _scontrol_job(job_id)
    assert job["JobState"] == "COMPLETED" and job["Partition"] == "gpu", job
    assert job["TresPerJob"] == "gres:gpu:1", job  # requested
    assert job["JOB_GRES"] == "gpu:1", job  # allocated
    metrics = json.loads(
        (root / "out-slurm" / "group" / "models" / "cnn" / "metrics.json").read_text()
    )
    assert metrics["model"] == "cnn" and metrics["device"] == "cpu" and len(metrics["history"]) == 1


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
