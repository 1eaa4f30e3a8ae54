"""Running an optimizer on tasks of a family: the inner loop shared by meta-training, evaluation and probes.

Everything here is a pure function of one task; callers ``vmap`` over tasks and place the ``jit``. ``unroll``
is the inner loop, a ``lax.scan`` over inner steps: evaluation, truncated meta-training and distillation
demonstrations call it; probe traces call ``run_steps``, its scan over step keys the caller holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lab.families.base import Observation, Params, TaskFamily, Task, grad_of
from lab.optimizers.base import Optimizer

_EPS = 1e-8


class InnerState(NamedTuple):
    """One task being optimized: parameters, optimizer state, the task, steps taken, and the excess base
    objective at the start (``base0``, above ``floor``, the task's known minimum or 0) for normalisation."""

    params: Params
    opt_state: Any
    task: Task
    step: jax.Array
    base0: jax.Array
    floor: jax.Array


class StepRecord(NamedTuple):
    """What one inner step produced: quantities after the step, the update applied, the captures."""

    quantities: dict[str, jax.Array]
    update: Params
    captures: dict[str, jax.Array]


def observe(family: TaskFamily, optimizer: Optimizer, params: Params, task: Task, key: jax.Array) -> Observation:
    """The family's observation, with exact gradients of the quantities the optimizer declares it needs."""
    obs = family.observe(params, task, key)
    if optimizer.oracle:
        obs = obs._replace(oracle={q: grad_of(family, q, params, task) for q in optimizer.oracle})
    return obs


def strongly_typed(tree):
    """``tree`` with every weakly typed array (one made from a Python number, as ``jnp.full(shape, 0.5)`` or
    optax's zero states are) strongly typed, as a ``lax.scan`` returns its carry. A program that takes a weakly
    typed start and then its own strongly typed output is traced and compiled twice, once for each."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype) if getattr(x, "weak_type", False) else x,
                        tree)


def start(family: TaskFamily, optimizer: Optimizer | None, key: jax.Array, task: Task | None = None) -> InnerState:
    """A fresh task (drawn from ``key`` unless given) at fresh parameters, step 0, strongly typed (a family's
    ``init`` may build its parameters from Python numbers). ``optimizer`` ``None`` leaves the optimizer state
    empty (``()``), for a caller that starts one family's tasks for several optimizers and adds each one's
    ``init(params)`` itself (``probes.trace``)."""
    k_task, k_init = jax.random.split(key)
    task = family.sample(k_task) if task is None else task
    params = family.init(k_init, task)
    minimum = family.minimum(task)
    floor = jnp.zeros([]) if minimum is None else jnp.asarray(minimum, jnp.float32)
    base0 = family.base_value(params, task) - floor
    opt_state = () if optimizer is None else optimizer.init(params)
    return strongly_typed(InnerState(params, opt_state, task, jnp.zeros([], jnp.int32), base0, floor))


def step(family: TaskFamily, optimizer: Optimizer, state: InnerState, key: jax.Array) -> tuple[InnerState, StepRecord]:
    """One inner step: observe, update, let the world apply the update (frozen blocks, step limits)."""
    obs = observe(family, optimizer, state.params, state.task, key)
    update, opt_state, captures = optimizer.update(obs, state.opt_state, state.params)
    params = family.apply_update(state.params, update)
    record = StepRecord(family.quantities(params, state.task), update, captures)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), record


def unroll(family: TaskFamily, optimizer: Optimizer, state: InnerState, key: jax.Array, steps: int,
           keep: Callable[[InnerState, StepRecord], Any] = lambda state, record: record, *,
           restart_after: int | None = None, remat: bool = False) -> tuple[InnerState, Any]:
    """The inner loop: ``steps`` inner steps with ``lax.scan``, one key of ``split(key, steps)`` per step.

    Returns the final state and ``keep(state, record)`` stacked over steps, ``state`` being the state after
    the step (``keep`` filters what a long unroll stores, e.g. ``lambda state, record: record.quantities``).

    ``restart_after``: a task whose step count has reached it is replaced, before the step, by a fresh task:
    the per-task resets of truncated meta-training. A task restarts at most once every ``restart_after``
    steps, so ``ceil(steps / restart_after)`` fresh tasks are all ``steps`` steps can need; they are drawn
    once, before the scan, from the first half of ``key`` split in two (the second half gives the steps'
    keys), and so outside the rematerialised step. The stacked output is then ``(kept, resets)`` with
    per-step flags.
    ``remat`` rematerialises each step in the backward pass (``jax.checkpoint``), bounding backprop memory
    through the unroll by one step's activations per step.
    """
    if restart_after is None:
        return run_steps(family, optimizer, state, jax.random.split(key, steps), keep, remat=remat)

    k_fresh, k_steps = jax.random.split(key)
    count = -(-steps // restart_after)
    fresh = jax.vmap(lambda k: start(family, optimizer, k))(jax.random.split(k_fresh, count))

    def body_with_resets(carry, k):
        s, used = carry
        reset = s.step >= restart_after
        replacement = jax.tree.map(lambda f: f[jnp.minimum(used, count - 1)], fresh)
        s = jax.tree.map(lambda f, o: jnp.where(reset, f, o), replacement, s)
        s, record = step(family, optimizer, s, k)
        return (s, used + reset), (keep(s, record), reset)

    body = jax.checkpoint(body_with_resets) if remat else body_with_resets
    (state, _), out = jax.lax.scan(body, (state, jnp.zeros([], jnp.int32)), jax.random.split(k_steps, steps))
    return state, out


def run_steps(family: TaskFamily, optimizer: Optimizer, state: InnerState, keys: jax.Array,
              keep: Callable[[InnerState, StepRecord], Any] = lambda state, record: record, *,
              remat: bool = False) -> tuple[InnerState, Any]:
    """``len(keys)`` inner steps with ``lax.scan``, step ``i`` drawing from ``keys[i]``: ``unroll`` without
    restarts, for callers that hold the step keys. Running a rollout's keys in consecutive slices, each from the
    state the last one ended in, gives the same steps as one call: so one compiled program of a slice's length
    serves rollouts of any multiple of it (``probes.trace.record``)."""

    def body(s, k):
        s, record = step(family, optimizer, s, k)
        return s, keep(s, record)

    return jax.lax.scan(jax.checkpoint(body) if remat else body, state, keys)


def log_excess_ratio(state: InnerState, base: jax.Array, clip: float, floor: float | None = None) -> jax.Array:
    """The normalised base objective of meta-training: ``log((base − floor) / base0)``, clipped above at
    ``clip`` so that a diverging task cannot dominate the meta-loss (a non-finite value counts as ``clip``),
    and, if ``floor`` is given, below at ``floor``: a task already solved to ``e^floor`` of its start earns
    nothing more, so the steep log of ever smaller excesses cannot drown the other tasks' meta-gradient."""
    ratio = jnp.log(jnp.maximum(base - state.floor, 0.0) + _EPS) - jnp.log(state.base0 + _EPS)
    if floor is not None:
        ratio = jnp.maximum(ratio, floor)
    return jnp.where(jnp.isfinite(ratio), jnp.minimum(ratio, clip), clip)
