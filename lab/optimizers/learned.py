"""Per-parameter learned optimizers with named input features.

Two architectures share one feature pipeline and one output head:
- ``mlp``: a small MLP applied to every parameter element (Metz et al. 2020, "Tasks, stability,
  architecture, and compute: training more effective learned optimizers"); the step is
  ``direction · exp(magnitude · exp_mult) · step_mult``, so that with the head's small initial weights the
  first steps are near zero.
- ``lstm``: a coordinatewise LSTM (Andrychowicz et al. 2016, "Learning to learn by gradient descent by
  gradient descent") whose hidden state is carried per parameter element, with the same head.

Input features are chosen by name (``inputs``); the vocabulary is

======================  =====================================================================================
``grad[:CH]``           the primary gradient (or the extra channel ``CH``), normalised by its RMS over the block
``mom{β}[:CH]``         its exponential moving average with decay β, e.g. ``mom0.9``, normalised the same way
``scale[:CH]``          log of the block RMS of that gradient: the absolute scale the normalisation removes
``adam{β}[:CH]``        Adam's direction per element (Kingma and Ba 2015): the bias-corrected moving average with
                        decay β over the root of the bias-corrected moving average of squares (decay 0.999),
                        e.g. ``adam0.9``; the per-element second-moment input of Metz et al. 2022 ("Practical
                        tradeoffs between memory, compute, and performance in learned optimizers")
``param``               the parameter value
``loss``                log(loss / first loss), clipped to [-10, 10]
``step{k}``             tanh(step / k − 1), a step-count embedding at timescale k
``cue:NAME``            the named cue feature
======================  =====================================================================================

Meta-parameters φ are a plain pytree of arrays (no module objects cross ``jit``/``grad``/``scan``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from lab.families.base import Observation, Params
from lab.optimizers.base import Optimizer, Parametric

_FEATURE = re.compile(r"^(grad|mom(?P<decay>0?\.\d+)|adam(?P<adam_decay>0?\.\d+)|scale)(:(?P<channel>\w+))?$"
                      r"|^param$|^loss$|^step(?P<k>\d+)$|^cue:(?P<cue>\w+)$")
_EPS = 1e-12
ADAM_SQUARES_DECAY = 0.999  # the second-moment decay of every adam{β} feature (Adam's default β2)
ADAM_EPS = 1e-8             # Adam's default ε


def parse_feature(name: str) -> dict:
    """Splits a feature name into its parts; raises ``ValueError`` naming the vocabulary if it is unknown."""
    match = _FEATURE.match(name)
    if match is None:
        raise ValueError(f"unknown learned-optimizer input feature {name!r}; use grad[:CH], mom<decay>[:CH], "
                         "adam<decay>[:CH], scale[:CH], param, loss, step<k> or cue:NAME")
    return {k: v for k, v in match.groupdict().items() if v is not None}


def default_inputs(channels: tuple[str, ...] = (), cues: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The default feature set: primary gradient, momenta at three decays, its scale, parameter, loss,
    two step embeddings, the gradient and a momentum of every extra channel, and the named ``cues``."""
    base = ("grad", "mom0.5", "mom0.9", "mom0.99", "scale", "param", "loss", "step10", "step100")
    return (base + tuple(f for ch in channels for f in (f"grad:{ch}", f"mom0.9:{ch}"))
            + tuple(f"cue:{c}" for c in cues))


class LearnedState(NamedTuple):
    """Per-run state of a learned optimizer: step count, first loss, momenta by feature name, RNN state."""

    step: jax.Array
    loss0: jax.Array
    momenta: dict[str, jax.Array]
    rnn: dict[str, jax.Array]


def _normalised(tree) -> jax.Array:
    """Every block divided by its RMS (the second-moment normaliser of Metz et al. 2020), flattened."""
    return ravel_pytree(jax.tree.map(lambda v: v / jnp.sqrt(jnp.mean(v**2) + _EPS), tree))[0]


def _dense(key, n_in, n_out, scale=1.0):
    return {"w": scale * jax.random.normal(key, (n_in, n_out)) / jnp.sqrt(n_in), "b": jnp.zeros((n_out,))}


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer:
    """A per-parameter learned optimizer definition (static); its meta-parameters φ are separate.

    Use ``init_meta(key)`` for φ, ``optimizer(φ)`` for the lab's ``Optimizer`` protocol and ``as_optax(φ)``
    to train a model of your own with it.
    """

    kind: Literal["mlp", "lstm"] = "mlp"
    inputs: tuple[str, ...] = default_inputs()
    hidden: int = 32
    layers: int = 2
    step_mult: float = 0.1
    exp_mult: float = 0.1
    head_scale: float = 0.01

    def __post_init__(self):
        if self.kind not in ("mlp", "lstm"):
            raise ValueError(f"unknown learned optimizer kind {self.kind!r}; known: mlp, lstm")
        for name in self.inputs:
            parse_feature(name)

    # --- meta-parameters ----------------------------------------------------------------------------
    def init_meta(self, key: jax.Array) -> dict:
        """Fresh meta-parameters φ (a plain pytree)."""
        n_in = len(self.inputs)
        k_body, k_head = jax.random.split(key)
        if self.kind == "mlp":
            keys = jax.random.split(k_body, self.layers)
            sizes = [n_in] + [self.hidden] * self.layers
            body = {f"hidden_{i}": _dense(keys[i], sizes[i], sizes[i + 1]) for i in range(self.layers)}
        else:
            body = {"lstm": _dense(k_body, n_in + self.hidden, 4 * self.hidden)}
        return {**body, "head": _dense(k_head, self.hidden, 2, scale=self.head_scale)}

    # --- features -----------------------------------------------------------------------------------
    def _momenta_names(self) -> list[str]:
        """The moving averages the state carries: one per ``mom`` feature, two per ``adam`` feature (its average
        and, under ``NAME/squares``, its average of squares)."""
        names = []
        for n in self.inputs:
            if n.startswith("mom"):
                names.append(n)
            elif n.startswith("adam"):
                names += [n, f"{n}/squares"]
        return names

    def init(self, params: Params) -> LearnedState:
        """Initial optimizer state for parameters ``params``."""
        n = sum(v.size for v in jax.tree.leaves(params))
        rnn = ({"h": jnp.zeros((n, self.hidden)), "c": jnp.zeros((n, self.hidden))} if self.kind == "lstm" else {})
        return LearnedState(
            step=jnp.zeros([], jnp.int32),
            loss0=jnp.zeros([]),
            momenta={m: jax.tree.map(jnp.zeros_like, params) for m in self._momenta_names()},
            rnn=rnn,
        )

    def features(self, obs: Observation, state: LearnedState, params: Params):
        """The named input features, each a vector over all parameter elements, and the new momenta."""

        def gradient(channel):
            if channel is None:
                return obs.grad
            if channel not in obs.channels:
                raise ValueError(f"feature needs gradient channel {channel!r}, observation has: "
                                 f"{', '.join(obs.channels) or 'none'}")
            return obs.channels[channel]

        loss0 = jnp.where(state.step == 0, obs.loss, state.loss0)
        n = sum(v.size for v in jax.tree.leaves(params))
        momenta, feats = {}, {}
        for name in self.inputs:
            part = parse_feature(name)
            kind = name.split(":")[0]
            if kind == "grad":
                feats[name] = _normalised(gradient(part.get("channel")))
            elif kind.startswith("mom"):
                g, decay = gradient(part.get("channel")), float(part["decay"])
                m = jax.tree.map(lambda m0, gi: decay * m0 + (1 - decay) * gi, state.momenta[name], g)
                momenta[name] = m
                feats[name] = _normalised(m)
            elif kind.startswith("adam"):
                g, decay = gradient(part.get("channel")), float(part["adam_decay"])
                m = jax.tree.map(lambda m0, gi: decay * m0 + (1 - decay) * gi, state.momenta[name], g)
                v = jax.tree.map(lambda v0, gi: ADAM_SQUARES_DECAY * v0 + (1 - ADAM_SQUARES_DECAY) * gi**2,
                                 state.momenta[f"{name}/squares"], g)
                momenta[name], momenta[f"{name}/squares"] = m, v
                t = (state.step + 1).astype(jnp.float32)
                m_hat = ravel_pytree(m)[0] / (1 - decay**t)
                v_hat = ravel_pytree(v)[0] / (1 - ADAM_SQUARES_DECAY**t)
                feats[name] = m_hat / (jnp.sqrt(v_hat) + ADAM_EPS)
            elif kind == "scale":
                log_rms = jax.tree.map(lambda v: jnp.full(v.shape, 0.5 * jnp.log(jnp.mean(v**2) + _EPS)),
                                       gradient(part.get("channel")))
                feats[name] = ravel_pytree(log_rms)[0]
            elif kind == "param":
                feats[name] = ravel_pytree(params)[0]
            elif kind == "loss":
                ratio = jnp.log(jnp.abs(obs.loss) + _EPS) - jnp.log(jnp.abs(loss0) + _EPS)
                feats[name] = jnp.full((n,), jnp.clip(ratio, -10.0, 10.0))
            elif kind.startswith("step"):
                feats[name] = jnp.full((n,), jnp.tanh(state.step / int(part["k"]) - 1.0))
            else:  # cue
                cue = part["cue"]
                if cue not in obs.cues:
                    raise ValueError(f"feature needs cue {cue!r}, observation has: {', '.join(obs.cues) or 'none'}")
                feats[name] = jnp.full((n,), obs.cues[cue])
        return feats, momenta, loss0

    # --- the update ---------------------------------------------------------------------------------
    def apply(self, meta: dict, obs: Observation, state: LearnedState, params: Params):
        """One step: ``(update, new_state, captures)``. Captures are named per element (leading axis = all
        parameter elements, leaves in tree order): ``input/<feature>``, ``mlp/hidden_<i>`` or ``lstm/h`` and
        ``lstm/c``, ``output/direction``, ``output/magnitude``, ``output/step``."""
        feats, momenta, loss0 = self.features(obs, state, params)
        x = jnp.stack([feats[name] for name in self.inputs], axis=-1)
        captures = {f"input/{name}": feats[name] for name in self.inputs}
        rnn = state.rnn
        if self.kind == "mlp":
            h = x
            for i in range(self.layers):
                layer = meta[f"hidden_{i}"]
                h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
                captures[f"mlp/hidden_{i}"] = h
        else:
            cell = meta["lstm"]
            gates = jnp.concatenate([x, rnn["h"]], axis=-1) @ cell["w"] + cell["b"][None, :]
            i_g, f_g, o_g, c_in = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f_g + 1.0) * rnn["c"] + jax.nn.sigmoid(i_g) * jnp.tanh(c_in)
            h = jax.nn.sigmoid(o_g) * jnp.tanh(c)
            rnn = {"h": h, "c": c}
            captures["lstm/h"], captures["lstm/c"] = h, c
        out = h @ meta["head"]["w"] + meta["head"]["b"][None, :]
        direction, magnitude = out[:, 0], out[:, 1]
        step = direction * jnp.exp(magnitude * self.exp_mult) * self.step_mult
        captures.update({"output/direction": direction, "output/magnitude": magnitude, "output/step": step})
        new_state = LearnedState(step=state.step + 1, loss0=loss0, momenta=momenta, rnn=rnn)
        return ravel_pytree(params)[1](step), new_state, captures

    def optimizer(self, meta: dict) -> Optimizer:
        """The learned optimizer with meta-parameters ``meta`` in the lab's ``Optimizer`` protocol."""
        return Optimizer(init=self.init, update=lambda obs, state, params: self.apply(meta, obs, state, params))

    def parametric(self, meta: dict) -> Parametric:
        """``optimizer(meta)`` as a ``Parametric``: the programs that run it take ``meta`` as an argument, so every
        meta-parameter value of this architecture (each run, seed and checkpoint) shares their compilation."""
        return Parametric(_optimizer_of(self), meta)

    def as_optax(self, meta: dict) -> optax.GradientTransformationExtraArgs:
        """Exports the learned optimizer as an optax transformation for any parameter pytree.

        ``update(grads, state, params, *, loss=...)``: pass ``loss`` if the inputs use the ``loss`` feature.
        Features that need extra gradient channels or cues cannot be fed through optax and are refused.
        """
        unavailable = [n for n in self.inputs if ":" in n]
        if unavailable:
            raise ValueError(f"as_optax: features {unavailable} need extra channels or cues that optax "
                             "cannot provide; choose inputs without them")
        needs_loss = "loss" in self.inputs

        def init_fn(params):
            return self.init(params)

        def update_fn(updates, state, params=None, *, loss=None, **extra):
            del extra
            if params is None:
                raise ValueError("as_optax: the learned optimizer needs params in update(grads, state, params)")
            if needs_loss and loss is None:
                raise ValueError("as_optax: this learned optimizer reads the loss; call update(..., loss=value)")
            obs = Observation(grad=updates, channels={}, loss=jnp.asarray(0.0 if loss is None else loss),
                              cues={})
            step, state, _ = self.apply(meta, obs, state, params)
            return step, state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.lru_cache(maxsize=None)
def _optimizer_of(lopt: LearnedOptimizer):
    """``lopt.optimizer``, one function object per architecture (equal definitions share it): the ``make`` of
    ``LearnedOptimizer.parametric``, which compiled-program caches key on."""
    return lopt.optimizer
