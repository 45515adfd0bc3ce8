"""The group stage's dask cluster: a local cluster with the configured memory limit, or threads."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from pipeline.config import validate_config
from pipeline.dask_cluster import DaskOptions, dask_client


def test_local_cluster_has_the_memory_limit_and_computes():
    options = DaskOptions(n_workers=2, memory_limit="300MB")
    with dask_client(options) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert {w["memory_limit"] for w in workers.values()} == {300_000_000}
        # worker processes, bound to loopback
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
        x = da.arange(1_000_000, chunks=100_000, dtype=np.float64)
        assert x.sum().compute() == pytest.approx(999_999 * 1_000_000 / 2)
        pids = set(client.run(lambda: __import__("os").getpid()).values())
        assert len(pids) == 2 and __import__("os").getpid() not in pids
    assert client.status == "closed"


def test_threads_scheduler_starts_no_cluster():
    with dask_client(DaskOptions(scheduler="threads")) as client:
        assert client is None
        assert dask.config.get("scheduler") == "threads"
        assert da.ones(10, chunks=5).sum().compute() == 10


def test_cluster_is_closed_when_the_stage_fails():
    with pytest.raises(RuntimeError, match="boom"), dask_client(DaskOptions(n_workers=1)) as c:
        client = c
        raise RuntimeError("boom")
    assert client.status == "closed"


def test_dask_section_is_validated():
    cfg = validate_config({"dask": {"scheduler": "slurm", "slurm": {"queue": "gpu", "jobs": 3}}})
    assert cfg.dask.slurm.queue == "gpu" and cfg.dask.slurm.jobs == 3
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="dask.scheduler"):
        validate_config({"dask": {"scheduler": "kubernetes"}})
    with pytest.raises(ConfigError, match="unknown key 'dask.slurm.queu'"):
        validate_config({"dask": {"slurm": {"queu": "x"}}})
