"""Hand-written optimizers in the lab's protocol: optax rules, ``descend`` for any named quantity and
``descend_mixture`` for a weighted sum of them (ground truths built on the oracle, ``lab.optimizers.base``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import optax

from lab.optimizers.base import Optimizer


def from_optax(tx: optax.GradientTransformation, channel: str | None = None) -> Optimizer:
    """Wraps an optax transformation: it descends the primary gradient, or the named extra channel."""

    def update(obs, state, params):
        grad = obs.grad if channel is None else obs.channels[channel]
        updates, state = tx.update(grad, state, params)
        return updates, state, {}

    return Optimizer(init=tx.init, update=update)


def sgd(learning_rate: float) -> Optimizer:
    """Plain gradient descent."""
    return from_optax(optax.sgd(learning_rate))


def momentum(learning_rate: float, decay: float = 0.9) -> Optimizer:
    """Heavy-ball momentum (Polyak 1964)."""
    return from_optax(optax.sgd(learning_rate, momentum=decay))


def adam(learning_rate: float) -> Optimizer:
    """Adam (Kingma and Ba 2015)."""
    return from_optax(optax.adam(learning_rate))


def sign_sgd(learning_rate: float) -> Optimizer:
    """signSGD (Bernstein et al. 2018): steps of fixed size along the gradient's sign."""
    return from_optax(optax.chain(optax.scale_by_sign(), optax.scale(-learning_rate)))


def clipped_sgd(learning_rate: float, max_norm: float = 1.0) -> Optimizer:
    """Gradient descent on the gradient clipped to global norm ``max_norm``."""
    return from_optax(optax.chain(optax.clip_by_global_norm(max_norm), optax.scale(-learning_rate)))


def descend(quantity: str, rule: optax.GradientTransformation) -> Optimizer:
    """An optimizer that applies ``rule`` to the exact gradient of the named ``quantity`` of the family it
    runs on: the building block of the planted zoo, whose pursued objective is known by construction."""
    return descend_mixture({quantity: 1.0}, rule)


def descend_mixture(weights: Mapping[str, float], rule: optax.GradientTransformation) -> Optimizer:
    """An optimizer that applies ``rule`` to the exact gradient of ``Σ_q weights[q] · q`` over named quantities
    of the family it runs on (``{"wilting": 0.7, "dry_sensor": 0.3}``): a ground truth whose pursued objective
    is that mixture by construction. It declares the quantities as its ``oracle``, so every rollout fills
    ``observation.oracle`` with their exact gradients (``lab.rollout.observe``)."""
    names = tuple(weights)
    coefficients = tuple(float(weights[q]) for q in names)
    if not names or not all(math.isfinite(w) for w in coefficients):
        raise ValueError(f"descend_mixture needs at least one quantity with a finite weight, got {dict(weights)}")

    def update(obs, state, params):
        def mix(*gs):  # with one quantity, 1.0 · ∇q: descend(q, rule) is rule on ∇q exactly, bit for bit
            return sum((w * g for w, g in zip(coefficients[1:], gs[1:])), coefficients[0] * gs[0])

        mixed = jax.tree.map(mix, *[obs.oracle[q] for q in names])
        updates, state = rule.update(mixed, state, params)
        return updates, state, {}

    return Optimizer(init=rule.init, update=update, oracle=names)
