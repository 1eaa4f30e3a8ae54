"""Truncated unrolls with per-task resets and random start offsets (README, "Meta-training").

A ``Truncation`` is what every gradient estimator sees: for ONE task, ``init(key)`` gives a starting inner
state and ``unroll(meta, state, key)`` runs ``length`` inner steps, returning the per-step meta-loss, the new
state and per-step reset flags. A task whose step count reaches the horizon is replaced by a fresh task at
the start of the next step, so a long training horizon is covered by many short truncations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lab import rollout
from lab.families.base import TaskFamily
from lab.optimizers.learned import LearnedOptimizer


class Truncation(NamedTuple):
    """``init(key) -> state``; ``unroll(meta, state, key) -> (losses[length], state, resets[length])``."""

    init: Callable[[jax.Array], Any]
    unroll: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any, jax.Array]]
    length: int


def make_truncation(family: TaskFamily, lopt: LearnedOptimizer, length: int, loss_clip: float,
                    remat: bool = True, loss_floor: float | None = None) -> Truncation:
    """Truncations of ``length`` steps of the learned optimizer ``lopt`` on ``family``.

    The per-step meta-loss is ``rollout.log_excess_ratio`` of the base objective after the step, clipped to
    [``loss_floor``, ``loss_clip``]. ``init``
    starts each task at a random step offset in [0, horizon) so that resets are spread over time and the
    truncations of different tasks are not synchronised. ``remat`` rematerialises each step in the backward
    pass (``jax.checkpoint``), bounding truncated-backprop memory by one step's activations per step at the
    price of a second forward pass (``scripts/bench.py`` measures both). Fresh tasks for the resets are drawn
    once per truncation, outside the differentiated step (``rollout.unroll``).
    """
    horizon = family.horizon

    def init(key):
        k_start, k_offset = jax.random.split(key)
        state = rollout.start(family, lopt.optimizer(None), k_start)
        return state._replace(step=jax.random.randint(k_offset, [], 0, horizon, jnp.int32))

    def unroll(meta, state, key):
        def loss(s, record):
            return rollout.log_excess_ratio(s, record.quantities[family.base], loss_clip, loss_floor)

        state, (losses, resets) = rollout.unroll(family, lopt.optimizer(meta), state, key, length, loss,
                                                 restart_after=horizon, remat=remat)
        return losses, state, resets

    return Truncation(init, unroll, length)
