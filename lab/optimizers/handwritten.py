"""Hand-written optimizers in the lab's protocol: optax rules, and ``descend`` for any named quantity."""

from __future__ import annotations

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

    def update(obs, state, params):
        updates, state = rule.update(obs.oracle[quantity], state, params)
        return updates, state, {}

    return Optimizer(init=rule.init, update=update, oracle=(quantity,))
