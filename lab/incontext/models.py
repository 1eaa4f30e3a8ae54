"""Sequence models that learn in context, defined in Flax NNX and applied as plain pytrees.

- ``LSA``: linear self-attention as in von Oswald et al. 2022 (their eq. 5, no softmax, no normalisation):
  every token gets ``e_j ← e_j + P Σ_i e_i (e_iᵀ Q e_j) / N`` with the sum over the N context tokens (the query
  reads the context but is not itself read). ``layers`` layers with their own (P, Q), or ``looped``: one (P, Q)
  applied ``layers`` times. The prediction is ``−`` the query's y-slot, the sign of their construction, in
  which the context y's become residuals layer by layer.
- ``SoftmaxAttention``: ``heads``-head softmax attention over the context, same residual stream and readout.

Modules are built once (``build``), split with ``nnx.split`` into a static graph definition and a plain
parameter pytree, and applied by ``apply(graphdef, params, tokens)`` for one sequence; batch with ``jax.vmap``.
``gd_lsa`` builds the hand-constructed weights that implement GD (γ = 0) or GD++ exactly, a no-training control.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


class LSA(nnx.Module):
    """Linear self-attention, ``layers`` deep (``looped``: one weight pair reused)."""

    def __init__(self, dim: int, layers: int = 1, looped: bool = False, init_scale: float = 0.02, *,
                 rngs: nnx.Rngs):
        width, count = dim + 1, 1 if looped else layers
        init = nnx.initializers.normal(init_scale)
        self.p = nnx.Param(init(rngs.params(), (count, width, width)))
        self.q = nnx.Param(init(rngs.params(), (count, width, width)))
        self.layers, self.looped = layers, looped

    def layer(self, e: jax.Array, i) -> jax.Array:
        """Layer ``i`` (a weight-pair index, may be traced) applied to one sequence ``e`` (N + 1, d + 1)."""
        n = e.shape[0] - 1
        ctx = e[:n]
        return e + e @ self.q[...][i].T @ (ctx.T @ ctx / n) @ self.p[...][i].T

    def stream(self, e: jax.Array) -> list[jax.Array]:
        """The residual stream of one sequence ``e`` (N + 1, d + 1): the input, then after every layer."""
        out = [e]
        for layer in range(self.layers):
            e = self.layer(e, 0 if self.looped else layer)
            out.append(e)
        return out

    def __call__(self, e: jax.Array) -> jax.Array:
        return -self.stream(e)[-1][-1, -1]


class SoftmaxAttention(nnx.Module):
    """``heads``-head softmax attention from every token to the context, ``layers`` deep, residual stream."""

    def __init__(self, dim: int, layers: int = 1, heads: int = 4, head_dim: int = 16, *, rngs: nnx.Rngs):
        width = dim + 1
        init = nnx.initializers.lecun_normal()
        self.wq = nnx.Param(init(rngs.params(), (layers, heads, width, head_dim)))
        self.wk = nnx.Param(init(rngs.params(), (layers, heads, width, head_dim)))
        self.wv = nnx.Param(init(rngs.params(), (layers, heads, width, head_dim)))
        self.wo = nnx.Param(0.1 * init(rngs.params(), (layers, heads, head_dim, width)))
        self.layers = layers

    def layer(self, e: jax.Array, i) -> jax.Array:
        """Layer ``i`` (may be traced) applied to one sequence ``e`` (N + 1, d + 1)."""
        n = e.shape[0] - 1
        ctx = e[:n]
        q = jnp.einsum("td,hdk->htk", e, self.wq[...][i])
        k = jnp.einsum("td,hdk->htk", ctx, self.wk[...][i])
        v = jnp.einsum("td,hdk->htk", ctx, self.wv[...][i])
        att = jax.nn.softmax(jnp.einsum("htk,hsk->hts", q, k) / jnp.sqrt(q.shape[-1]), axis=-1)
        return e + jnp.einsum("hts,hsk,hkd->td", att, v, self.wo[...][i])

    def stream(self, e: jax.Array) -> list[jax.Array]:
        out = [e]
        for layer in range(self.layers):
            e = self.layer(e, layer)
            out.append(e)
        return out

    def __call__(self, e: jax.Array) -> jax.Array:
        return -self.stream(e)[-1][-1, -1]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What to build: ``kind`` "lsa" or "softmax", its depth, looping, heads; hashable, so it names a model."""

    kind: str = "lsa"
    layers: int = 1
    looped: bool = False
    heads: int = 4

    def __post_init__(self):
        if self.kind not in ("lsa", "softmax"):
            raise ValueError(f"model kind must be 'lsa' or 'softmax', not {self.kind!r}")
        if self.layers < 1 or self.heads < 1:
            raise ValueError("layers and heads must be positive")
        if self.looped and self.kind != "lsa":
            raise ValueError("only linear self-attention can be looped here")


def build(spec: ModelSpec, dim: int, key: jax.Array):
    """(graphdef, params): the model split once; ``params`` is a plain pytree (an ``nnx.State``)."""
    rngs = nnx.Rngs(params=key)
    if spec.kind == "lsa":
        model = LSA(dim, spec.layers, spec.looped, rngs=rngs)
    else:
        model = SoftmaxAttention(dim, spec.layers, spec.heads, rngs=rngs)
    return nnx.split(model)


def apply(graphdef, params, e: jax.Array) -> jax.Array:
    """The model's prediction for one token sequence."""
    return nnx.merge(graphdef, params)(e)


def stream(graphdef, params, e: jax.Array) -> list[jax.Array]:
    """The residual stream of one token sequence (the activations the linear probes read)."""
    return nnx.merge(graphdef, params).stream(e)


def gd_lsa(dim: int, eta: float, gamma: float = 0.0, layers: int = 1, looped: bool = True):
    """(graphdef, params) of the hand-constructed LSA of von Oswald et al. (their Prop. 1): ``P = −diag(γI, η)``,
    ``Q = diag(I, 0)``; with γ = 0 it is ``layers`` GD steps of size η on the in-context mean loss, else GD++.
    Every weight is set by hand, so the key the module is built with does not matter (no draw survives)."""
    graphdef, params = build(ModelSpec("lsa", layers, looped), dim, jax.random.key(0))
    count = 1 if looped else layers
    p = -jnp.diag(jnp.concatenate([jnp.full(dim, gamma), jnp.array([eta])]))
    q = jnp.diag(jnp.concatenate([jnp.ones(dim), jnp.zeros(1)]))
    params["p"].set_value(jnp.broadcast_to(p, (count, dim + 1, dim + 1)))
    params["q"].set_value(jnp.broadcast_to(q, (count, dim + 1, dim + 1)))
    return graphdef, params
