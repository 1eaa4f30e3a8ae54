"""Rollouts recorded for probes: per task and step, the parameters, the update, every named quantity and the
named captures of any optimizer (learned or hand-written) on a family under a shift."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab import rollout
from lab.families.base import TaskFamily
from lab.optimizers.base import Optimizer


@dataclasses.dataclass(frozen=True)
class Trace:
    """A batch of rollouts. Arrays are numpy, leading axes (tasks, steps) or (tasks, steps + 1).

    Attributes:
      family: the (shifted) family the rollouts ran on; ``shift`` its name.
      params: θ_0 … θ_T per task, a dict of arrays (tasks, steps + 1, ...).
      updates: the update each step applied (before the world's own limits), (tasks, steps, ...).
      quantities: every named quantity at θ_0 … θ_T, (tasks, steps + 1).
      captures: the kept captures, (tasks, steps, ...).
      tasks: the task pytree, leading axis tasks.
    """

    family: TaskFamily
    shift: str
    params: dict[str, np.ndarray]
    updates: dict[str, np.ndarray]
    quantities: dict[str, np.ndarray]
    captures: dict[str, np.ndarray]
    tasks: Any

    @property
    def steps(self) -> int:
        return next(iter(self.quantities.values())).shape[1] - 1

    @property
    def n_tasks(self) -> int:
        return next(iter(self.quantities.values())).shape[0]

    @property
    def base(self) -> np.ndarray:
        """The base objective, (tasks, steps + 1)."""
        return self.quantities[self.family.base]


def record(optimizer: Optimizer, family: TaskFamily, key: jax.Array, tasks: int = 32, steps: int | None = None,
           shift: str = "train", captures: Sequence[str] | bool = False, keep_params: bool = True) -> Trace:
    """Runs ``optimizer`` on ``tasks`` tasks of ``family.shift(shift)`` for ``steps`` steps (default: that
    family's horizon) and records what probes read.

    ``captures``: ``False`` keeps none, ``True`` all, or a list of names or name prefixes ending in ``/`` to keep
    (long unrolls should keep only what a probe needs). ``keep_params=False`` drops θ and updates.
    """
    fam = family.shift(shift)
    steps = fam.horizon if steps is None else steps

    def wanted(name):
        if isinstance(captures, bool):
            return captures
        return any(name == c or (c.endswith("/") and name.startswith(c)) for c in captures)

    def keep(r: rollout.StepRecord):
        kept = {k: v for k, v in r.captures.items() if wanted(k)}
        return r.quantities, (r.update if keep_params else {}), kept

    def one(k):
        k_start, k_run = jax.random.split(k)
        state = rollout.start(fam, optimizer, k_start)
        q0 = fam.quantities(state.params, state.task)

        def body(s, kk):
            s, r = rollout.step(fam, optimizer, s, kk)
            return s, (*keep(r), s.params if keep_params else {})

        _, (qs, ups, caps, ps) = jax.lax.scan(body, state, jax.random.split(k_run, steps))
        qs = {n: jnp.concatenate([q0[n][None], qs[n]]) for n in qs}
        ps = {n: jnp.concatenate([state.params[n][None], ps[n]]) for n in ps} if keep_params else {}
        return qs, ups, caps, ps, state.task

    qs, ups, caps, ps, task = jax.jit(jax.vmap(one))(jax.random.split(key, tasks))
    to_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return Trace(fam, shift, to_np(ps), to_np(ups), to_np(qs), to_np(caps), to_np(task))
