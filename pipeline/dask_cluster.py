"""The dask cluster of the group stage: a local cluster with a memory limit, or SLURM workers.

The group stage's big arrays (voxel-wise maps of every subject) are dask arrays; where their
blocks are computed is the config's ``dask:`` section:

* ``scheduler: local`` (default): a :class:`distributed.LocalCluster` of worker *processes* on
  this machine, each with ``memory_limit`` (dask spills to disk, then pauses, then restarts a
  worker that outgrows it), the scheduler bound to 127.0.0.1;
* ``scheduler: slurm``: a :class:`dask_jobqueue.SLURMCluster`; every SLURM job runs
  ``slurm.processes`` workers sharing ``slurm.cores`` and ``slurm.memory``; ``slurm.jobs`` jobs
  are submitted and the stage waits for the first worker;
* ``scheduler: threads``: no cluster, dask's threaded scheduler in this process (small data).

dask and dask-jobqueue do all the work; this module only maps the validated options onto them and
closes what it started, also when the stage fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from pipeline._options import StrictOptions
from pipeline.errors import ConfigError, StageError

logger = logging.getLogger(__name__)


class SlurmDaskOptions(StrictOptions):
    """dask-jobqueue SLURMCluster settings (``dask.scheduler: slurm``)."""

    queue: str | None = Field(None, description="SLURM partition of the worker jobs.")
    account: str | None = Field(None, description="SLURM account to charge.")
    cores: int = Field(1, ge=1, description="CPU cores per worker job.")
    processes: int = Field(1, ge=1, description="dask worker processes per job.")
    memory: str = Field("4GB", description="Memory per worker job (shared by its processes).")
    walltime: str = Field("01:00:00", description="Time limit per worker job.")
    jobs: int = Field(2, ge=1, description="Worker jobs to submit.")
    job_extra_directives: list[str] = Field(
        default_factory=list, description="Extra #SBATCH lines, e.g. ['--qos=normal']."
    )
    interface: str | None = Field(
        None, description="Network interface of the workers (e.g. ib0); null: the default."
    )
    scheduler_host: str | None = Field(
        None,
        description="Address the scheduler binds to (127.0.0.1 when scheduler and workers share "
        "one node); null: this host's address.",
    )
    log_directory: str | None = Field(None, description="Where SLURM writes the workers' logs.")
    wait_timeout: float = Field(
        300, gt=0, description="Seconds to wait for the first worker before giving up."
    )


class DaskOptions(StrictOptions):
    """Where the group stage computes its dask arrays."""

    scheduler: Literal["local", "slurm", "threads"] = Field(
        "local",
        description="local: worker processes on this machine with a memory limit; slurm: "
        "dask-jobqueue workers submitted to SLURM; threads: dask's threaded scheduler.",
    )
    n_workers: int | None = Field(
        None, ge=1, description="Local worker processes (null: min(4, cores))."
    )
    threads_per_worker: int = Field(1, ge=1, description="Threads per local worker.")
    memory_limit: str = Field(
        "2GB", description="Memory limit per local worker (dask spills, pauses, restarts)."
    )
    dashboard: bool = Field(False, description="Serve the dask dashboard (port 8787).")
    slurm: SlurmDaskOptions = Field(
        default_factory=SlurmDaskOptions, description=SlurmDaskOptions.__doc__
    )


def _local_cluster(options: DaskOptions) -> Any:
    import os

    from distributed import LocalCluster

    n_workers = options.n_workers or max(1, min(4, os.cpu_count() or 1))
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=options.threads_per_worker,
        processes=True,
        memory_limit=options.memory_limit,
        host="127.0.0.1",
        # the scheduler's HTTP server (health, metrics) starts even without the dashboard: a
        # random port unless the dashboard is asked for, so two clusters never compete for 8787
        dashboard_address=":8787" if options.dashboard else "127.0.0.1:0",
        scheduler_kwargs={"dashboard": options.dashboard},
    )


def _slurm_cluster(options: DaskOptions) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:  # pragma: no cover - a dependency of the cluster extra
        raise ConfigError(
            "dask.scheduler is 'slurm' but dask-jobqueue is not installed "
            "(pip install 'symprep[cluster]')"
        ) from exc
    s = options.slurm
    kwargs: dict[str, Any] = {
        "queue": s.queue,
        "account": s.account,
        "cores": s.cores,
        "processes": s.processes,
        "memory": s.memory,
        "walltime": s.walltime,
        "job_extra_directives": list(s.job_extra_directives),
        "log_directory": s.log_directory,
    }
    if s.interface:
        kwargs["interface"] = s.interface
    scheduler: dict[str, Any] = {
        "dashboard_address": ":8787" if options.dashboard else ":0",
        "dashboard": options.dashboard,
    }
    if s.scheduler_host:
        scheduler["host"] = s.scheduler_host
    kwargs["scheduler_options"] = scheduler
    cluster = SLURMCluster(**{k: v for k, v in kwargs.items() if v is not None})
    cluster.scale(jobs=s.jobs)
    return cluster


@contextlib.contextmanager
def dask_client(options: DaskOptions | None = None) -> Iterator[Any]:
    """Start the dask cluster the options ask for; yield its client (None for ``threads``).

    While the block runs, ``.compute()`` on any dask array uses this cluster. The client and the
    cluster (with its SLURM jobs) are closed on the way out, whatever happens inside.

    Parameters
    ----------
    options : DaskOptions, optional
        Defaults: a local cluster with a 2 GB memory limit per worker.

    Yields
    ------
    distributed.Client or None
    """
    options = options or DaskOptions()
    if options.scheduler == "threads":
        import dask

        with dask.config.set(scheduler="threads"):
            yield None
        return
    from distributed import Client

    cluster = _slurm_cluster(options) if options.scheduler == "slurm" else _local_cluster(options)
    client = Client(cluster)
    try:
        if options.scheduler == "slurm":
            try:
                client.wait_for_workers(1, timeout=options.slurm.wait_timeout)
            except TimeoutError as exc:
                raise StageError(
                    f"no dask worker joined within {options.slurm.wait_timeout:.0f} s "
                    f"(SLURM queue {options.slurm.queue or 'default'}): are the jobs pending?"
                ) from exc
        logger.info(
            "dask %s cluster: %d worker(s), dashboard %s",
            options.scheduler,
            len(client.scheduler_info().get("workers", {})),
            client.dashboard_link if options.dashboard else "off",
        )
        yield client
    finally:
        client.close()
        cluster.close()
