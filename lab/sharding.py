"""Sharding the task axis over devices (README, "Meta-training"): meta-parameters replicated, tasks split.

The same code runs on one device, on several (``jax.config.update("jax_num_cpu_devices", 4)`` fakes them on a
CPU) and over several processes after ``initialize`` (``jax.distributed.initialize``, JAX's own multi-process
runtime): ``jax.devices()`` then lists every process's devices, every process runs the same program on its
share of the tasks, and the collectives between them are JAX's (gloo on CPUs, NCCL on GPUs). What only one
process should do (write files) asks ``is_writer``; ``gather`` brings a sharded tree to every host whole, and
``agree`` lets every process learn whether all of them succeeded at a step, so that none waits forever in a
collective for one that failed.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

# Environment variables ``initialize`` reads where no argument is given. JAX itself reads the first;
# the other two name the arguments of ``jax.distributed.initialize`` the same way.
ENV_COORDINATOR, ENV_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, detect: bool = False) -> bool:
    """Joins a multi-process run with ``jax.distributed.initialize(coordinator_address, num_processes,
    process_id)`` when any of them is given, here or in the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or when ``detect`` asks JAX to read them from the cluster
    (SLURM's ``srun``, Open MPI's ``mpirun``, an indexed Kubernetes Job); a value still missing is detected by
    JAX the same way. Returns whether it joined one. Call it before anything touches a JAX backend; a bad
    value raises ``ValueError`` with one line."""
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _env_int(ENV_PROCESSES) if num_processes is None else num_processes
    process_id = _env_int(ENV_PROCESS_ID) if process_id is None else process_id
    if not detect and coordinator_address is None and num_processes is None and process_id is None:
        return False
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except Exception as e:  # JAX raises ValueError, RuntimeError or its own errors: one line, whichever
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ValueError(f"jax.distributed.initialize failed: {lines[0]}") from None
    return True


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 (the only process of a one-process run)."""
    return jax.process_index() == 0


def gather(tree):
    """``tree`` as NumPy arrays, whole on every process: a tree sharded over several processes is gathered (a
    collective: every process must call it), any other is fetched from its devices."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (a collective: every process must call it, also one that failed,
    which is what lets the others stop instead of waiting for it); ``ok`` itself in a one-process run."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([ok], np.int32))))


def broadcast(tree):
    """Process 0's ``tree`` (NumPy arrays of the same shapes on every process) on every process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def task_mesh(devices: int | None = None) -> jax.sharding.Mesh:
    """A one-axis mesh named ``tasks`` over the first ``devices`` devices (default: all)."""
    n = jax.device_count() if devices is None else devices
    return jax.make_mesh((n,), ("tasks",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def shard_tasks(tree, mesh: jax.sharding.Mesh):
    """Places every leaf of ``tree`` split along its leading (task) axis over the mesh."""
    tasks = jax.tree.leaves(tree)[0].shape[0]
    if tasks % mesh.size:
        raise ValueError(f"{tasks} tasks do not split evenly over {mesh.size} devices")
    return jax.device_put(tree, NamedSharding(mesh, P("tasks")))


def replicate(tree, mesh: jax.sharding.Mesh):
    """Places every leaf of ``tree`` whole on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))
