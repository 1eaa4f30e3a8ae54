"""Evaluating an optimizer on held-out tasks against Adam with a tuned learning rate."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import rollout
from lab.families.base import TaskFamily, family_parts, rebuilt
from lab.optimizers.base import Optimizer, Parametric, built, program_parts
from lab.optimizers.handwritten import from_optax


def _final_states(family: TaskFamily, optimizer: Optimizer, key: jax.Array, tasks: int,
                  horizon: int | None) -> rollout.InnerState:
    """The inner states after ``horizon`` steps (default: the family's) on ``tasks`` tasks drawn from ``key``."""
    horizon = family.horizon if horizon is None else horizon

    def one(k):
        k_start, k_run = jax.random.split(k)
        state = rollout.start(family, optimizer, k_start)
        final, _ = rollout.unroll(family, optimizer, state, k_run, horizon, keep=lambda s, r: None)
        return final

    return jax.vmap(one)(jax.random.split(key, tasks))


def _excess(family: TaskFamily, final: rollout.InnerState) -> jax.Array:
    excess = jax.vmap(family.base_value)(final.params, final.task) - final.floor
    return jnp.where(jnp.isfinite(excess), excess, jnp.inf)


def _extent(final: rollout.InnerState) -> jax.Array:
    peak = jnp.max(jnp.concatenate([jnp.abs(v).reshape(v.shape[0], -1) for v in jax.tree.leaves(final.params)], -1),
                   axis=-1)
    return jnp.where(jnp.isfinite(peak), peak, jnp.inf)


def final_excess_base(family: TaskFamily, optimizer: Optimizer, key: jax.Array, tasks: int,
                      horizon: int | None = None) -> jax.Array:
    """Per task, the base objective above the task's known minimum (or above 0) after ``horizon`` steps
    (default: the family's), on ``tasks`` tasks drawn from ``key``. Non-finite results become ``inf``."""
    return _excess(family, _final_states(family, optimizer, key, tasks, horizon))


@functools.lru_cache(maxsize=None)
def _final_fn(skeleton: TaskFamily, optimizer: Optimizer | None, make: Callable | None, tasks: int,
              horizon: int | None):
    """Jitted once per (family skeleton, optimizer or ``make``, tasks, horizon): ``(key, args, family numbers) ->
    (final excess base, final extent of θ)``, each ``(tasks,)``: one rollout gives the evaluation and its range
    check (``held_out_extent``)."""

    def both(key, args, numbers):
        family = rebuilt(skeleton, numbers)
        final = _final_states(family, built(optimizer, make, args), key, tasks, horizon)
        return _excess(family, final), _extent(final)

    return jax.jit(both)


def _final(family: TaskFamily, optimizer: Optimizer | Parametric, key: jax.Array, tasks: int):
    """``_final_fn``'s two arrays for ``optimizer`` (a ``Parametric`` shares one program over its ``args``)."""
    opt, make, args = program_parts(optimizer)
    skeleton, numbers = family_parts(family)
    return _final_fn(skeleton, opt, make, tasks, None)(key, args, numbers)


def adam_lr_grid(points: int = 11) -> np.ndarray:
    """The log-spaced learning rates tried for Adam: 1e-4 to 10."""
    return np.logspace(-4, 1, points)


def adam(learning_rate) -> Optimizer:
    """Adam on the observed gradient at ``learning_rate`` (a float or a traced scalar): the default rule of
    ``adam_grid_means``, a module-level function so that its compilations are cached across calls."""
    return from_optax(optax.adam(learning_rate))


@functools.lru_cache(maxsize=None)
def _grid_fn(skeleton: TaskFamily, tasks: int, horizon: int | None, make: Callable[[jax.Array], Optimizer]):
    """A jitted ``(key, lrs, family numbers) -> mean final excess base per learning rate``, built once per (family
    skeleton, tasks, horizon, make): the rates are a traced argument, so every grid of the same size shares one
    compilation."""

    def means(key, lrs, numbers):
        family = rebuilt(skeleton, numbers)

        def mean_for(lr):
            return jnp.mean(final_excess_base(family, make(lr), key, tasks, horizon))

        out = jax.vmap(mean_for)(lrs)
        return jnp.where(jnp.isfinite(out), out, jnp.inf)

    return jax.jit(means)


def adam_grid_means(family: TaskFamily, tasks: int, lrs, horizon: int | None = None, make=None):
    """``key -> mean final excess base of Adam at each learning rate in lrs``, compiled once per (family,
    tasks, horizon, make) and reused for tuning on some tasks and testing on others. ``make(lr) -> Optimizer``
    (traced ``lr``) replaces Adam on the observed gradient by another rule; pass the same function object
    each time (a module-level or cached one) to reuse its compilation."""
    lrs = jnp.asarray(lrs, jnp.float32)
    skeleton, numbers = family_parts(family)
    fn = _grid_fn(skeleton, tasks, horizon, adam if make is None else make)
    return lambda key: fn(key, lrs, numbers)


def tune_adam(family: TaskFamily, key: jax.Array, tasks: int, lrs=None, horizon: int | None = None, make=None):
    """The Adam learning rate from ``lrs`` with the lowest mean final excess base on tasks from ``key``;
    returns ``(best_lr, mean per lr)``. ``make`` as in ``adam_grid_means``."""
    lrs = adam_lr_grid() if lrs is None else np.asarray(lrs)
    means = np.asarray(adam_grid_means(family, tasks, lrs, horizon, make)(key))
    return float(lrs[int(np.argmin(means))]), means


def compare_with_adam(family: TaskFamily, optimizer: Optimizer | Parametric, key: jax.Array, tasks: int = 128,
                      lrs=None) -> dict:
    """The learned optimizer and tuned Adam on the same ``tasks`` held-out tasks for the family's horizon.
    ``optimizer`` may be a ``Parametric`` (``LearnedOptimizer.parametric(meta)``): then every meta-parameter value
    of one architecture shares the evaluation's compiled rollout.

    Adam's learning rate is chosen on other tasks. Returns the ``eval`` record of a run's summary:
    ``horizon``, ``tasks``, ``lopt_base``, ``adam_base`` (mean final excess base), ``adam_lr`` and
    ``ratio = lopt_base / adam_base``; a value that is not finite (a diverged optimizer) is ``None``.
    """
    k_tune, k_test = jax.random.split(key)
    lrs = adam_lr_grid() if lrs is None else np.asarray(lrs)
    grid = adam_grid_means(family, tasks, lrs)
    best = int(np.argmin(np.asarray(grid(k_tune))))
    adam_lr, adam_base = float(lrs[best]), float(grid(k_test)[best])
    lopt_base = float(jnp.mean(_final(family, optimizer, k_test, tasks)[0]))
    ratio = lopt_base / adam_base if adam_base > 0 else float("inf")
    # JSON has no infinity: a diverged evaluation is reported as null.
    finite = lambda x: x if np.isfinite(x) else None  # noqa: E731
    return {"horizon": family.horizon, "tasks": tasks, "lopt_base": finite(lopt_base),
            "adam_base": finite(adam_base), "adam_lr": adam_lr, "ratio": finite(ratio)}


def evaluation_rows(family: TaskFamily, optimizer: Optimizer | Parametric, key: jax.Array, tasks: int = 128,
                    horizons: tuple[int, ...] = (), shifts: tuple[str, ...] = (), lrs=None) -> list[dict]:
    """``compare_with_adam`` beyond the training conditions, one record per row: first at each multiple in
    ``horizons`` of the family's horizon, then at the training horizon under each named shift of ``shifts`` (a
    longer horizon is also a shift of every family: ``horizon`` is a field of ``TaskFamily``). Each record is
    ``compare_with_adam``'s with ``shift`` (``"train"`` for the horizon rows) and ``horizon_mult``; Adam's learning
    rate is tuned again for every row (on tasks other than the row's test tasks), so each row compares the learned
    optimizer with the best constant-rate Adam of that row. The held-out tasks are drawn from the same ``key`` in
    every row (the same data where the shift leaves the tasks as they were)."""
    rows = []
    for mult in horizons:
        longer = dataclasses.replace(family, horizon=family.horizon * mult)
        rows.append({"shift": "train", "horizon_mult": mult, **compare_with_adam(longer, optimizer, key, tasks, lrs)})
    for name in shifts:
        rows.append({"shift": name, "horizon_mult": 1,
                     **compare_with_adam(family.shift(name), optimizer, key, tasks, lrs)})
    return rows


def held_out_extent(family: TaskFamily, optimizer: Optimizer | Parametric, key: jax.Array,
                    tasks: int = 128) -> float:
    """The largest |θ| element (``inf`` if any is not finite) the optimizer reaches at the end of the family's
    horizon on the held-out tasks ``compare_with_adam(family, optimizer, key, tasks)`` tests on; with the same
    ``optimizer`` object it reuses that evaluation's compiled rollout."""
    _, k_test = jax.random.split(key)
    return float(jnp.max(_final(family, optimizer, k_test, tasks)[1]))


def evaluation_warnings(family: TaskFamily, optimizer: Optimizer | Parametric, key: jax.Array, evaluation: dict,
                        tasks: int = 128) -> list[str]:
    """One line per trap the held-out evaluation ``evaluation = compare_with_adam(family, optimizer, key, tasks)``
    reveals, each naming the fix: the optimizer diverged there (its figures are null, whatever the meta-loss said:
    the meta-loss clips diverging tasks), or θ left the finite range ``family.param_range``."""
    out = []
    if evaluation["lopt_base"] is None:
        out.append(f"evaluation diverged: the learned optimizer's base is not finite after {family.horizon} steps on "
                   "held-out tasks (eval figures null) although the clipped meta-loss may look fine; give the family "
                   "a step_limit, or meta-train with a smaller --meta-lr")
    extent = held_out_extent(family, optimizer, key, tasks)
    if not extent <= family.param_range:
        reached = "is not finite" if not np.isfinite(extent) else f"reaches |θ| = {extent:.3g}"
        out.append(f"θ left the finite range: on held-out tasks it {reached} (param_range {family.param_range:g} of "
                   f"family {family.name!r}); give the family a step_limit so the world bounds every step")
    return out
