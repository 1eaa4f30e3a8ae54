"""Meta-gradient estimators behind one interface: truncated backprop, antithetic ES and PES.

Each estimator works on a batch of tasks (leading axis of its state) and a ``Truncation``:
``init(key, tasks, meta) -> state`` and ``grad(meta, state, key) -> (meta_loss, meta_grad, state)``.

- ``tbptt``: backpropagation through each truncation, the state carried between truncations without gradient;
  biased when influence spans truncations (Wu et al. 2018, "Understanding short-horizon bias").
- ``es``: antithetic evolution strategies on each truncation (Salimans et al. 2017), one perturbation per task;
  the carried state is the positive branch's.
- ``pes``: persistent evolution strategies (Vicol, Metz and Sohl-Dickstein 2021, "Unbiased gradient
  estimation in unrolled computation graphs with persistent evolution strategies"): each task keeps a
  positive and a negative state and the sum of its perturbations since its episode began, which makes the
  estimate unbiased for the gradient of the whole episode's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lab.meta.truncation import Truncation


class Estimator(NamedTuple):
    """``init(key, tasks, meta) -> state``; ``grad(meta, state, key) -> (meta_loss, meta_grad, state)``."""

    init: Callable[[jax.Array, int, Any], Any]
    grad: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any, Any]]


class PESState(NamedTuple):
    """Per task: the positive and negative inner states and the accumulated perturbation (flat)."""

    positive: Any
    negative: Any
    accumulated: jax.Array


def _init_states(trunc: Truncation):
    return lambda key, tasks, meta=None: jax.vmap(trunc.init)(jax.random.split(key, tasks))


def _task_keys(key, state):
    return jax.random.split(key, jax.tree.leaves(state)[0].shape[0])


def tbptt(trunc: Truncation) -> Estimator:
    """Truncated backpropagation through time."""

    def grad(meta, state, key):
        keys = _task_keys(key, state)

        def loss_fn(m):
            losses, new_state, _ = jax.vmap(trunc.unroll, in_axes=(None, 0, 0))(m, state, keys)
            return jnp.mean(losses), new_state

        (loss, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(meta)
        return loss, g, jax.lax.stop_gradient(new_state)

    return Estimator(_init_states(trunc), grad)


def _perturbations(key, meta, tasks, sigma):
    flat, unravel = ravel_pytree(meta)
    z = jax.random.normal(key, (tasks, flat.size), flat.dtype)
    plus = jax.vmap(lambda e: unravel(flat + sigma * e))(z)
    minus = jax.vmap(lambda e: unravel(flat - sigma * e))(z)
    return z, plus, minus, unravel


def _antithetic_unroll(trunc: Truncation, plus, minus, state_plus, state_minus, keys):
    """The +ε and −ε unrolls of every task as one batch of twice the tasks (one program, twice the width,
    instead of two programs one after the other); both branches of a task share its key."""
    def both(a, b):
        return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)

    unrolled = jax.vmap(trunc.unroll)(both(plus, minus), both(state_plus, state_minus),
                                      jnp.concatenate([keys, keys]))
    tasks = keys.shape[0]
    return jax.tree.map(lambda x: x[:tasks], unrolled), jax.tree.map(lambda x: x[tasks:], unrolled)


def es(trunc: Truncation, sigma: float) -> Estimator:
    """Antithetic ES on each truncation: ``mean_i (L⁺ᵢ − L⁻ᵢ) zᵢ / 2σ`` with ``ε = σz``."""

    def grad(meta, state, key):
        k_z, k_unroll = jax.random.split(key)
        keys = _task_keys(k_unroll, state)
        z, plus, minus, unravel = _perturbations(k_z, meta, keys.shape[0], sigma)
        (loss_p, state_p, _), (loss_m, _, _) = _antithetic_unroll(trunc, plus, minus, state, state, keys)
        diff = jnp.mean(loss_p, axis=1) - jnp.mean(loss_m, axis=1)
        g = jnp.mean(diff[:, None] * z, axis=0) / (2 * sigma)
        return 0.5 * jnp.mean(loss_p + loss_m), unravel(g), state_p

    return Estimator(_init_states(trunc), grad)


def pes(trunc: Truncation, sigma: float) -> Estimator:
    """PES: each step's loss difference is weighted by the perturbations it depends on, the accumulated
    sum since its episode began; a reset inside the truncation restarts the accumulation."""

    def init(key, tasks, meta):
        states = _init_states(trunc)(key, tasks)
        return PESState(states, states, jnp.zeros((tasks, ravel_pytree(meta)[0].size)))

    def grad(meta, state, key):
        k_z, k_unroll = jax.random.split(key)
        keys = _task_keys(k_unroll, state.positive)
        z, plus, minus, unravel = _perturbations(k_z, meta, keys.shape[0], sigma)
        accumulated = state.accumulated
        (loss_p, state_p, resets), (loss_m, state_m, _) = _antithetic_unroll(
            trunc, plus, minus, state.positive, state.negative, keys)
        # A step at or after a reset in this truncation depends only on this truncation's perturbation.
        after_reset = jnp.cumsum(resets, axis=1) > 0                                    # (tasks, length)
        weight = jnp.where(after_reset[..., None], z[:, None, :], (accumulated + z)[:, None, :])
        diff = loss_p - loss_m                                                          # (tasks, length)
        g = jnp.mean(jnp.mean(diff[..., None] * weight, axis=1), axis=0) / (2 * sigma)
        new_acc = jnp.where(after_reset[:, -1:], z, accumulated + z)
        return 0.5 * jnp.mean(loss_p + loss_m), unravel(g), PESState(state_p, state_m, new_acc)

    return Estimator(init, grad)


def make_estimator(name: str, trunc: Truncation, sigma: float = 0.01) -> Estimator:
    """The estimator ``name`` (``tbptt``, ``es`` or ``pes``) on truncations ``trunc``."""
    if name == "tbptt":
        return tbptt(trunc)
    if name == "es":
        return es(trunc, sigma)
    if name == "pes":
        return pes(trunc, sigma)
    raise ValueError(f"unknown estimator {name!r}; known: tbptt, es, pes")
