"""JAX's multi-controller runtime: one process per host (or per GPU group), all running the same program.

``initialize(c)`` starts it when the run has several processes, from the config (``distributed.*``) or the
environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or by JAX's own cluster
auto-detection (``distributed.cluster``: "auto", "slurm", "ompi", "mpi4py", "k8s"). A single-process run needs
nothing and calls nothing. It must run before anything touches a device (``wmtp_jax.main`` calls it first).

After it: ``jax.devices()`` lists every process's devices; each process feeds its own rows
(``jax.make_array_from_process_local_data``); Orbax writes each process's shards; only process 0 logs
(MLflow, progress bars, result files).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import jax

T = TypeVar("T")

CLUSTERS = {"": None, "auto": None, "slurm": "slurm", "ompi": "ompi", "mpi4py": "mpi4py", "k8s": "k8s"}


def settings(c) -> dict | None:
    """``jax.distributed.initialize`` arguments for this run, or None for a single process."""
    d = c.distributed
    coordinator = (d.coordinator_address if d else "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = (d.num_processes if d else 0) or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    process_id = d.process_id if d and d.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
    cluster = d.cluster if d else ""
    if not cluster and num_processes <= 1 and not coordinator:
        return None
    args = {
        "coordinator_address": coordinator or None,
        "num_processes": num_processes or None,
        "process_id": process_id if process_id >= 0 else None,
    }
    if cluster not in ("", "auto"):
        args["cluster_detection_method"] = CLUSTERS[cluster]
    return args


def initialize(c) -> bool:
    """Starts the multi-process runtime if ``settings(c)`` asks for it; returns whether it did."""
    args = settings(c)
    if args is None:
        return False
    jax.distributed.initialize(**args)
    return True


def is_main_process() -> bool:
    """Whether this is process 0, the one that logs (MLflow, progress bars) and writes shared result files."""
    return jax.process_index() == 0


def main_process_first(fn: Callable[[], T], name: str) -> T:
    """Runs ``fn`` on process 0, then on the others once it finished (for work on a shared filesystem that
    every process needs done once: building micro models, converting checkpoints, preparing data)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result = fn() if is_main_process() else None
    multihost_utils.sync_global_devices(f"{name}:done")
    return result if is_main_process() else fn()
