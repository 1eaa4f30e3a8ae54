"""Rollouts recorded for probes: per task and step, the parameters, the update, every named quantity and the
named captures of any optimizer (learned or hand-written) on a family under a shift."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
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

    def first_tasks(self, n: int) -> Trace:
        """The first ``n`` tasks (all of them if there are fewer)."""
        head = lambda tree: jax.tree.map(lambda a: a[:n], tree)  # noqa: E731
        return dataclasses.replace(self, params=head(self.params), updates=head(self.updates),
                                   quantities=head(self.quantities), captures=head(self.captures),
                                   tasks=head(self.tasks))


def wanted(captures: tuple[str, ...] | bool, name: str) -> bool:
    """Whether ``record``'s capture filter keeps the capture ``name``."""
    if isinstance(captures, bool):
        return captures
    return any(name == c or (c.endswith("/") and name.startswith(c)) for c in captures)


def scale_updates(optimizer: Optimizer, multiplier: jax.Array | float) -> Optimizer:
    """``optimizer`` with every update multiplied by ``multiplier`` (the capability sweep's step multiplier;
    inside ``record``'s programs a traced scalar, so every multiplier shares one program, 1.0 included)."""

    def update(obs, state, params):
        u, state, captures = optimizer.update(obs, state, params)
        return jax.tree.map(lambda x: multiplier * x, u), state, captures

    return optimizer._replace(update=update)


@functools.lru_cache(maxsize=None)
def _starter(skeleton: TaskFamily):
    """The jitted ``(task keys, family numbers) -> (start states without an optimizer state, quantities at θ_0, run
    keys)`` of ``record``, made once per family skeleton: the subject and every reference optimizer run on the
    same tasks from one program."""

    def one(k, numbers):
        family = rebuilt(skeleton, numbers)
        k_start, k_run = jax.random.split(k)
        state = rollout.start(family, None, k_start)
        return state, family.quantities(state.params, state.task), k_run

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


@functools.lru_cache(maxsize=None)
def _initial(optimizer: Optimizer | None, make: Callable | None):
    """The jitted ``(parameters, args) -> optimizer states`` (``init``) of ``record``, per optimizer or ``make``."""
    def init(params, args):
        return rollout.strongly_typed(built(optimizer, make, args).init(params))

    return jax.jit(jax.vmap(init, in_axes=(0, None)))


@functools.partial(jax.jit, static_argnums=1)
def _step_keys(run_keys: jax.Array, steps: int) -> jax.Array:
    """Per task, the data of ``split(run key, steps)``, the rollout's step keys: (tasks, steps, key words), plain
    integers that the host cuts into pieces without a program per piece."""
    return jax.random.key_data(jax.vmap(lambda k: jax.random.split(k, steps))(run_keys))


@functools.lru_cache(maxsize=None)
def _recorder(skeleton: TaskFamily, optimizer: Optimizer | None, make: Callable | None,
              captures: tuple[str, ...] | bool, keep_params: bool, key_impl: str):
    """The jitted ``(states, step key data, args, family numbers, step multiplier) -> (states, (quantities,
    updates, captures, params))`` of ``record``: the steps of one piece of a rollout, made once per (family
    skeleton, optimizer or ``make``, capture filter, keep_params, random number generator) and reused by every
    probe, shift, seed and audit that asks for the same structure (``jit`` itself caches per shape: the number of
    tasks and of steps in a piece). Shifts that change only a family's traced fields share it, and so do step
    multipliers."""

    def keep(state: rollout.InnerState, r: rollout.StepRecord):
        kept = {k: v for k, v in r.captures.items() if wanted(captures, k)}
        return r.quantities, (r.update if keep_params else {}), kept, (state.params if keep_params else {})

    def one(state, key_data, args, numbers, multiplier):
        opt = scale_updates(built(optimizer, make, args), multiplier)
        keys = jax.random.wrap_key_data(key_data, impl=key_impl)
        return rollout.run_steps(rebuilt(skeleton, numbers), opt, state, keys, keep)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))


def piece_length(horizon: int, steps: int) -> int:
    """The steps ``record`` compiles one program for: the (unshifted) family's horizon where it divides
    ``steps``, so rollouts of 1, 4 and 10 horizons run one program; else all ``steps``. (A shift that lengthens
    the horizon is another family skeleton, so its programs are other cache entries of the same text: jax's
    persistent cache, where it is on, serves them.)"""
    return horizon if steps and horizon > 0 and steps % horizon == 0 else steps


def record(optimizer: Optimizer | Parametric, family: TaskFamily, key: jax.Array, tasks: int = 32,
           steps: int | None = None, shift: str = "train", captures: Sequence[str] | bool = False,
           keep_params: bool = True, step_mult: float = 1.0) -> Trace:
    """Runs ``optimizer`` on ``tasks`` tasks of ``family.shift(shift)`` for ``steps`` steps (default: that
    family's horizon), every update multiplied by ``step_mult``, and records what probes read.

    ``captures``: ``False`` keeps none, ``True`` all, or a list of names or name prefixes ending in ``/`` to keep
    (long unrolls should keep only what a probe needs). ``keep_params=False`` drops θ and updates.
    The compiled programs are cached per (shifted family up to its traced fields, optimizer, captures,
    keep_params): pass the same ``Optimizer`` object (or a ``Parametric`` with the same ``make``) to reuse them.
    The rollout runs in pieces of ``family``'s horizon (``piece_length``), each piece from the state the last
    ended in, so one program serves every length that is a multiple of it, and the numbers are those of one
    unbroken scan.
    """
    fam = family.shift(shift)
    steps = int(fam.horizon if steps is None else steps)
    captures = captures if isinstance(captures, bool) else tuple(captures)
    opt, make, args = program_parts(optimizer)
    skeleton, numbers = family_parts(fam)
    state, q0, run_keys = _starter(skeleton)(jax.random.split(key, tasks), numbers)
    state, params0 = state._replace(opt_state=_initial(opt, make)(state.params, args)), state.params
    run = _recorder(skeleton, opt, make, captures, keep_params, jax.random.key_impl(key))
    key_data, piece = np.asarray(_step_keys(run_keys, steps)), piece_length(family.horizon, steps)
    pieces = []  # kept on the device until the last piece is dispatched: no wait on the host between pieces
    for first in range(0, steps, piece) if steps else (0,):
        state, out = run(state, key_data[:, first:first + piece], args, numbers, np.float32(step_mult))
        pieces.append(out)
    qs, ups, caps, ps = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=1), *pieces)
    qs = {n: np.concatenate([np.asarray(q0[n])[:, None], qs[n]], axis=1) for n in qs}
    if keep_params:
        ps = {n: np.concatenate([np.asarray(params0[n])[:, None], ps[n]], axis=1) for n in ps}
    return Trace(fam, shift, ps, ups, qs, caps, jax.tree.map(np.asarray, state.task))
