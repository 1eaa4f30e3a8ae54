"""Rollouts recorded for probes: per task and step, the parameters, the update, every named quantity and the
named captures of any optimizer (learned or hand-written) on a family under a shift."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab import rollout
from lab.families.base import TaskFamily, family_parts, rebuilt
from lab.optimizers.base import Optimizer, Parametric, built, program_parts


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

    def after(self, start: int) -> Trace:
        """The steps from ``start`` on (θ_start … θ_T and the updates between)."""
        last = lambda tree: jax.tree.map(lambda a: a[:, start:], tree)  # noqa: E731
        return dataclasses.replace(self, params=last(self.params), updates=last(self.updates),
                                   quantities=last(self.quantities), captures=last(self.captures))

    def prefix(self, steps: int) -> Trace:
        """The first ``steps`` steps. A rollout's step keys are a prefix-consistent split of its key, so this is
        the trace a rollout of ``steps`` steps on the same key records."""
        first = lambda tree, n: jax.tree.map(lambda a: a[:, :n], tree)  # noqa: E731
        return dataclasses.replace(self, params=first(self.params, steps + 1), updates=first(self.updates, steps),
                                   quantities=first(self.quantities, steps + 1), captures=first(self.captures, steps))


def wanted(captures: tuple[str, ...] | bool, name: str) -> bool:
    """Whether ``record``'s capture filter keeps the capture ``name``."""
    if isinstance(captures, bool):
        return captures
    return any(name == c or (c.endswith("/") and name.startswith(c)) for c in captures)


@functools.lru_cache(maxsize=None)
def _recorder(skeleton: TaskFamily, optimizer: Optimizer | None, make: Callable | None, steps: int,
              captures: tuple[str, ...] | bool, keep_params: bool):
    """The jitted ``(task keys, args, family numbers) -> (quantities, updates, captures, params, tasks)`` of
    ``record``, made once per (family skeleton, optimizer or ``make``, steps, capture filter, keep_params) and
    reused by every probe, shift, seed and audit that asks for the same structure (``jit`` itself caches per
    shape: the number of tasks). Shifts that change only a family's traced fields share it."""

    def keep(state: rollout.InnerState, r: rollout.StepRecord):
        kept = {k: v for k, v in r.captures.items() if wanted(captures, k)}
        return r.quantities, (r.update if keep_params else {}), kept, (state.params if keep_params else {})

    def one(k, args, numbers):
        family = rebuilt(skeleton, numbers)
        opt = built(optimizer, make, args)
        k_start, k_run = jax.random.split(k)
        state = rollout.start(family, opt, k_start)
        q0 = family.quantities(state.params, state.task)
        _, (qs, ups, caps, ps) = rollout.unroll(family, opt, state, k_run, steps, keep)
        qs = {n: jnp.concatenate([q0[n][None], qs[n]]) for n in qs}
        ps = {n: jnp.concatenate([state.params[n][None], ps[n]]) for n in ps} if keep_params else {}
        return qs, ups, caps, ps, state.task

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def record(optimizer: Optimizer | Parametric, family: TaskFamily, key: jax.Array, tasks: int = 32,
           steps: int | None = None, shift: str = "train", captures: Sequence[str] | bool = False,
           keep_params: bool = True) -> Trace:
    """Runs ``optimizer`` on ``tasks`` tasks of ``family.shift(shift)`` for ``steps`` steps (default: that
    family's horizon) and records what probes read.

    ``captures``: ``False`` keeps none, ``True`` all, or a list of names or name prefixes ending in ``/`` to keep
    (long unrolls should keep only what a probe needs). ``keep_params=False`` drops θ and updates.
    The compiled rollout is cached per (shifted family up to its traced fields, optimizer, steps, captures,
    keep_params): pass the same ``Optimizer`` object (or a ``Parametric`` with the same ``make``) to reuse it.
    """
    fam = family.shift(shift)
    steps = fam.horizon if steps is None else steps
    captures = captures if isinstance(captures, bool) else tuple(captures)
    opt, make, args = program_parts(optimizer)
    skeleton, numbers = family_parts(fam)
    run = _recorder(skeleton, opt, make, int(steps), captures, keep_params)
    qs, ups, caps, ps, task = run(jax.random.split(key, tasks), args, numbers)
    to_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return Trace(fam, shift, to_np(ps), to_np(ups), to_np(qs), to_np(caps), to_np(task))
