"""Which Dask cluster a scan runs on: ``--cluster local:N``, ``tcp://host:8786`` or ``slurm:N``.

Why Dask distributed: it fits the PyData stack the tool already uses, runs the same on a
laptop, a cloud cluster and the SLURM/PBS clusters universities give ecologists (through
dask-jobqueue, configured by a YAML file, so no one writes code to use it).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

JOBQUEUE_SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
_LOCAL = re.compile(r"^local:(\d+)$")
_JOBQUEUE = re.compile(r"^(slurm|pbs|sge|lsf):(\d+)$")


def check_cluster(spec: str) -> str:
    """``spec`` if it names a cluster this tool can use; ValueError saying the valid forms."""
    if _LOCAL.match(spec) or _JOBQUEUE.match(spec) or re.match(r"^(tcp|tls|ucx|inproc)://\S+$", spec):
        if (m := _LOCAL.match(spec) or _JOBQUEUE.match(spec)) and int(m.groups()[-1]) < 1:
            raise ValueError(f"cluster {spec!r}: need at least one worker")
        return spec
    raise ValueError(f"cluster {spec!r}: expected local:N (N worker processes here), tcp://HOST:PORT (a running "
                     "Dask scheduler) or slurm:N / pbs:N (N jobs through dask-jobqueue, configured in its YAML file)")


@contextlib.contextmanager
def open_cluster(spec: Any, torch_threads: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec``, closed (with any cluster it started) on exit.

    ``spec`` may also be a Client already connected (the library API, tests): it is used as is
    and left open. ``local:N`` starts N worker processes with one thread each on loopback, with
    no dashboard; their torch and BLAS threads are ``torch_threads`` (default 1), so N workers
    use N cores."""
    from distributed import Client

    if isinstance(spec, Client):
        yield spec
        return
    spec = check_cluster(str(spec))
    if not logger.isEnabledFor(logging.DEBUG):  # Dask's own INFO lines (comms, closing) drown the scan's progress
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = _start_cluster(spec, torch_threads)  # None: join a running scheduler at spec
    client = Client(cluster if cluster is not None else spec)
    logger.info("%s Dask cluster at %s", "started a" if cluster is not None else "connected to the",
                client.scheduler.address)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _start_cluster(spec: str, torch_threads: int | None) -> Any:
    """The cluster object ``spec`` asks this process to start (local:N, slurm:N, ...), or None
    when ``spec`` is the address of a scheduler that is already running."""
    if m := _LOCAL.match(spec):
        from distributed import LocalCluster

        threads = str(torch_threads or 1)
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        return LocalCluster(n_workers=int(m.group(1)), threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, env=env)
    if m := _JOBQUEUE.match(spec):  # untested here: there is no SLURM on the development machines
        try:
            import dask_jobqueue
        except ImportError as e:
            raise ValueError(f"cluster {spec!r} needs dask-jobqueue (pip install dask-jobqueue)") from e
        cluster = getattr(dask_jobqueue, JOBQUEUE_SYSTEMS[m.group(1)])()  # settings from jobqueue.yaml
        cluster.scale(jobs=int(m.group(2)))
        return cluster
    return None
