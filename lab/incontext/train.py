"""Meta-training of in-context learners: the task axis is the batch, optax Adam, one jitted chunk of steps.

The base objective is the mean over tasks of half the squared query error. Each chunk of ``eval_every`` steps is
one ``lax.scan`` (fresh tasks every step from a key folded with the step number, so no key is reused) under one
``jax.jit`` placed here by the caller of ``make_chunk``; between chunks the caller's ``on_eval(params)`` records
whatever it wants (the probes record their alignment metrics), so nothing here knows about probes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lab.incontext.family import ICLFamily, tokens
from lab.incontext.models import ModelSpec, apply, build


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch: int = 1024        # tasks per step
    lr: float = 4e-3         # Adam peak learning rate, after a linear warm-up, cosine-decayed to lr/100
    warmup: int = 100
    clip: float = 1.0        # global-norm clipping of the meta-gradient
    eval_every: int = 250

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or self.eval_every < 1:
            raise ValueError("steps, batch and eval_every must be positive")
        if not self.lr > 0:
            raise ValueError("lr must be positive")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def predictions(graphdef, params, tasks: dict) -> jax.Array:
    """The model's query predictions on a batch of tasks."""
    return jax.vmap(lambda t: apply(graphdef, params, tokens(t)))(tasks)


def query_loss(graphdef, params, tasks: dict) -> jax.Array:
    """The base objective on a batch: mean of ½ (ŷ − y_q)²."""
    return jnp.mean(0.5 * (predictions(graphdef, params, tasks) - tasks["yq"]) ** 2)


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, min(config.warmup, config.steps),
                                                  max(config.steps, config.warmup + 1), config.lr / 100)
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(schedule))


def make_chunk(graphdef, family: ICLFamily, tx: optax.GradientTransformation, batch: int, steps: int,
               key: jax.Array) -> Callable[[TrainState], tuple[TrainState, jax.Array]]:
    """``chunk(state) -> (state, losses)``: ``steps`` meta-steps in one ``lax.scan``; the tasks of meta-step t are
    drawn from ``fold_in(key, t)``. Not jitted: the caller places the jit."""

    def one(state: TrainState, _):
        tasks = family.sample_batch(jax.random.fold_in(key, state.step), batch)
        loss, grads = jax.value_and_grad(lambda p: query_loss(graphdef, p, tasks))(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    def chunk(state: TrainState):
        return jax.lax.scan(one, state, None, length=steps)

    return chunk


def meta_train(spec: ModelSpec, family: ICLFamily, config: TrainConfig, key: jax.Array,
          on_eval: Callable[[Any, Any], dict] | None = None):
    """Meta-trains a ``spec`` model on ``family``. Returns ``(graphdef, params, history)``, with history
    ``{"step": [...], "loss": [...]}`` (the mean training loss of each chunk) plus, when ``on_eval(graphdef, params)``
    is given, ``"eval"``: its dicts at step 0 and after every chunk (steps in ``"eval_step"``)."""
    k_init, k_tasks = jax.random.split(key)
    graphdef, params = build(spec, family.dim, k_init)
    tx = optimizer(config)
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    history: dict[str, list] = {"step": [], "loss": []}
    if on_eval is not None:
        history["eval_step"], history["eval"] = [0], [on_eval(graphdef, params)]
    done = 0
    chunks: dict[int, Callable] = {}
    while done < config.steps:
        n = min(config.eval_every, config.steps - done)
        if n not in chunks:
            chunks[n] = jax.jit(make_chunk(graphdef, family, tx, config.batch, n, k_tasks))
        state, losses = chunks[n](state)
        done += n
        history["step"].append(done)
        history["loss"].append(float(jnp.mean(losses)))
        if on_eval is not None:
            history["eval_step"].append(done)
            history["eval"].append(on_eval(graphdef, state.params))
    return graphdef, state.params, history
