"""Sharding the task axis over devices (README, "Meta-training"): meta-parameters replicated, tasks split.

The same code runs on one device, on several (``jax.config.update("jax_num_cpu_devices", 4)`` fakes them on a
CPU) and multi-host after ``jax.distributed.initialize()``: ``jax.devices()`` then lists every host's devices.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


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
