"""Evaluating an optimizer on held-out tasks against Adam with a tuned learning rate."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import rollout
from lab.families.base import TaskFamily
from lab.optimizers.base import Optimizer
from lab.optimizers.handwritten import from_optax


def final_excess_base(family: TaskFamily, optimizer: Optimizer, key: jax.Array, tasks: int,
                      horizon: int | None = None) -> jax.Array:
    """Per task, the base objective above the task's known minimum (or above 0) after ``horizon`` steps
    (default: the family's), on ``tasks`` tasks drawn from ``key``. Non-finite results become ``inf``."""
    horizon = family.horizon if horizon is None else horizon

    def one(k):
        k_start, k_run = jax.random.split(k)
        state = rollout.start(family, optimizer, k_start)
        final, _ = rollout.unroll(family, optimizer, state, k_run, horizon, keep=lambda s, r: None)
        excess = family.base_value(final.params, final.task) - final.floor
        return jnp.where(jnp.isfinite(excess), excess, jnp.inf)

    return jax.vmap(one)(jax.random.split(key, tasks))


@functools.lru_cache(maxsize=None)
def _final_excess_fn(family: TaskFamily, optimizer: Optimizer, tasks: int, horizon: int | None):
    """``final_excess_base`` jitted once per (family, optimizer, tasks, horizon): ``key -> (tasks,)``."""
    return jax.jit(lambda key: final_excess_base(family, optimizer, key, tasks, horizon))


def adam_lr_grid(points: int = 11) -> np.ndarray:
    """The log-spaced learning rates tried for Adam: 1e-4 to 10."""
    return np.logspace(-4, 1, points)


def adam(learning_rate) -> Optimizer:
    """Adam on the observed gradient at ``learning_rate`` (a float or a traced scalar): the default rule of
    ``adam_grid_means``, a module-level function so that its compilations are cached across calls."""
    return from_optax(optax.adam(learning_rate))


@functools.lru_cache(maxsize=None)
def _grid_fn(family: TaskFamily, tasks: int, horizon: int | None, make: Callable[[jax.Array], Optimizer]):
    """A jitted ``(key, lrs) -> mean final excess base per learning rate``, built once per (family, tasks,
    horizon, make): the rates are a traced argument, so every grid of the same size shares one compilation."""

    def means(key, lrs):
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
    fn = _grid_fn(family, tasks, horizon, adam if make is None else make)
    return lambda key: fn(key, lrs)


def tune_adam(family: TaskFamily, key: jax.Array, tasks: int, lrs=None, horizon: int | None = None, make=None):
    """The Adam learning rate from ``lrs`` with the lowest mean final excess base on tasks from ``key``;
    returns ``(best_lr, mean per lr)``. ``make`` as in ``adam_grid_means``."""
    lrs = adam_lr_grid() if lrs is None else np.asarray(lrs)
    means = np.asarray(adam_grid_means(family, tasks, lrs, horizon, make)(key))
    return float(lrs[int(np.argmin(means))]), means


def compare_with_adam(family: TaskFamily, optimizer: Optimizer, key: jax.Array, tasks: int = 128,
                      lrs=None) -> dict:
    """The learned optimizer and tuned Adam on the same ``tasks`` held-out tasks for the family's horizon.

    Adam's learning rate is chosen on other tasks. Returns the ``eval`` record of a run's summary:
    ``horizon``, ``tasks``, ``lopt_base``, ``adam_base`` (mean final excess base), ``adam_lr`` and
    ``ratio = lopt_base / adam_base``; a value that is not finite (a diverged optimizer) is ``None``.
    """
    k_tune, k_test = jax.random.split(key)
    lrs = adam_lr_grid() if lrs is None else np.asarray(lrs)
    grid = adam_grid_means(family, tasks, lrs)
    best = int(np.argmin(np.asarray(grid(k_tune))))
    adam_lr, adam_base = float(lrs[best]), float(grid(k_test)[best])
    lopt_base = float(jnp.mean(_final_excess_fn(family, optimizer, tasks, None)(k_test)))
    ratio = lopt_base / adam_base if adam_base > 0 else float("inf")
    # JSON has no infinity: a diverged evaluation is reported as null.
    finite = lambda x: x if np.isfinite(x) else None  # noqa: E731
    return {"horizon": family.horizon, "tasks": tasks, "lopt_base": finite(lopt_base),
            "adam_base": finite(adam_base), "adam_lr": adam_lr, "ratio": finite(ratio)}
