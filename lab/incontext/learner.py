"""In-context learners in the lab's one ``Optimizer`` protocol: an update is what one layer (one loop) of the
learner does to its implied weights ŵ = ∂ŷ/∂x_q on the in-context family (``lab.families.incontext``).

A sequence model that learns in context is an optimizer run inside its forward pass (von Oswald et al. 2022,
"Transformers learn in-context by gradient descent"): layer by layer its prediction for the query improves as
if it took descent steps on an objective it builds from the context. Written as an ``Optimizer`` over θ = {"w":
ŵ}, every probe of the lab audits it exactly as it audits a per-parameter learned optimizer: the horizon is its
number of layers (a looped model's loops), "more capability" is more loops, and its captures are its residual
stream.

- ``attention(graphdef, params, spec, family)``: a trained (or hand-built, ``models.gd_lsa``) attention model.
  Its state is the residual stream and the tangent ∂e_q/∂x_q of the query token, both carried forward by one
  layer per step (forward-mode through the layer), so ŵ after layer t is exact for every model whose query
  output is linear in x_q (linear self-attention), and the local sensitivity for softmax attention.
- ``gdpp(eta, gamma)``: GD++ (von Oswald et al. §4), the looped LSA's algorithm written out; with γ = 0 it is
  plain GD on the in-context loss, which is also ``handwritten.sgd(eta)`` on the family's primary gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lab.families.incontext import ICLFamily, tokens
from lab.incontext.models import ModelSpec
from lab.optimizers.base import Optimizer

STREAM = "attention/stream"  # the capture: the residual stream (N + 1, d + 1) after the step's layer


class AttentionState(NamedTuple):
    """The learner's forward pass so far: the residual stream, the query token's tangent ∂e_q/∂x_q
    ((d + 1) × d), and the layers applied."""

    stream: jax.Array
    tangent: jax.Array
    step: jax.Array


def attention(graphdef, params, spec: ModelSpec, family: ICLFamily) -> Optimizer:
    """The attention model ``(graphdef, params)`` of ``spec`` as an ``Optimizer`` on ``family``'s implied weights.

    Step t applies layer t (a looped or one-layer model: its one layer, every step); a stack of distinct layers
    has no layer past its depth, so from there on it does not move. The context comes from
    ``Observation.context`` at the first step; the gradient channels are not read."""
    from flax import nnx

    model = nnx.merge(graphdef, params)
    d, n = family.dim, family.context
    reuse = spec.looped or spec.layers == 1
    start_tangent = jnp.concatenate([jnp.eye(d), jnp.zeros((1, d))])

    def init(theta):
        del theta
        return AttentionState(jnp.zeros((n + 1, d + 1)), jnp.zeros((d + 1, d)), jnp.zeros([], jnp.int32))

    def update(obs, state, theta):
        del theta
        fresh = state.step == 0
        e = jnp.where(fresh, tokens(obs.context), state.stream)
        tangent = jnp.where(fresh, start_tangent, state.tangent)
        layer = 0 if reuse else jnp.minimum(state.step, spec.layers - 1)

        def query_out(q):
            return model.layer(e.at[-1].set(q), layer)[-1]

        # The context rows never read the query, so the query row's Jacobian carries the tangent forward.
        e_new = model.layer(e, layer)
        tangent_new = jax.jacfwd(query_out)(e[-1]) @ tangent
        if not reuse:
            active = state.step < spec.layers
            e_new = jnp.where(active, e_new, e)
            tangent_new = jnp.where(active, tangent_new, tangent)
        # ŷ = −(query's y-slot), the sign of von Oswald et al.'s construction
        w_old, w_new = -tangent[-1], -tangent_new[-1]
        return {"w": w_new - w_old}, AttentionState(e_new, tangent_new, state.step + 1), {STREAM: e_new}

    return Optimizer(init=init, update=update)


class GDPPState(NamedTuple):
    """GD++ so far: the transformed context inputs, the context residuals, the query's transformation S
    (x_q ← S x_q) and the implied weights v (ŷ = v·x_q), and the steps taken."""

    xs: jax.Array
    residual: jax.Array
    s: jax.Array
    v: jax.Array
    step: jax.Array


def gdpp(eta: float, gamma: float, family: ICLFamily) -> Optimizer:
    """GD++ with step ``eta`` and data transformation ``gamma`` on ``family``: per step, ``v ← v + η Sᵀ Xᵀr/N``,
    ``r ← r − η X Xᵀr/N``, then every input ``x ← (I − γ XᵀX/N) x`` (the query's through S), exactly as
    ``lab.incontext.references.gdpp_weights`` and the hand-built looped LSA compute it."""
    d, n = family.dim, family.context

    def init(theta):
        del theta
        return GDPPState(jnp.zeros((n, d)), jnp.zeros(n), jnp.eye(d), jnp.zeros(d), jnp.zeros([], jnp.int32))

    def update(obs, state, theta):
        del theta
        fresh = state.step == 0
        xs = jnp.where(fresh, obs.context["x"], state.xs)
        r = jnp.where(fresh, obs.context["y"], state.residual)
        s = jnp.where(fresh, jnp.eye(d), state.s)
        v = jnp.where(fresh, jnp.zeros(d), state.v)
        a, g = xs.T @ xs / n, xs.T @ r / n
        v_new, r_new = v + eta * s.T @ g, r - eta * xs @ g
        t = jnp.eye(d) - gamma * a
        return {"w": v_new - v}, GDPPState(xs @ t, r_new, t @ s, v_new, state.step + 1), {}

    return Optimizer(init=init, update=update)


def closed_form(weights) -> Optimizer:
    """A learner that jumps in its first step to ``weights(context)`` (a closed-form reference learner of
    ``lab.incontext.references``: ``task -> ŵ`` reading ``x``, ``y`` and ``xq``) and then stays: the planted
    in-context learners, whose inner objective is known by construction."""

    def init(theta):
        del theta
        return jnp.zeros([], jnp.int32)

    def update(obs, step, theta):
        target = weights(obs.context)
        return {"w": jnp.where(step == 0, target - theta["w"], 0.0)}, step + 1, {}

    return Optimizer(init=init, update=update)
