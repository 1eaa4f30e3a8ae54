"""Meta-training of in-context learners: the task axis is the batch, optax Adam, one jitted chunk of steps.

The base objective is the mean over tasks of half the squared query error. Each chunk of ``eval_every`` steps is
one ``lax.scan`` (fresh tasks every step from a key folded with the step number, so no key is reused) under one
``jax.jit`` placed here by the caller of ``make_chunk``; between chunks the caller's ``on_eval(params)`` records
whatever it wants (the zoo records alignment with the reference learners), so nothing here knows about probes.

``train_run(config, out)`` trains into a run folder (``lab.runs``: config, metrics per chunk, a checkpoint per
chunk, summary), resumable bit for bit, and ``load_learner(out)`` gives the trained model back as an
``Optimizer`` on its family (``lab.incontext.learner``), so an in-context run is audited like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import runs
from lab.families.incontext import ICLFamily, tokens
from lab.incontext import learner, references
from lab.incontext.models import ModelSpec, apply, build
from lab.io import dumps, write_json_atomic


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
        if self.warmup < 0:
            raise ValueError("warmup must be ≥ 0")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError("lr and clip must be positive finite numbers")


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


# -------------------------------------------------------------------------------------------------------
# Run folders
# -------------------------------------------------------------------------------------------------------
FAMILY_FIELDS = ("dim", "context", "noise", "prior", "input_scale", "inputs", "masked", "pool", "pool_seed")
# Fields that may differ when a run is resumed. Not ``steps``: the learning-rate schedule (warm-up, then a cosine)
# spans the run's steps, so a longer run is a different trajectory from its first step on, not an extension.
RESUMABLE_CHANGES = ("eval_tasks",)


@dataclasses.dataclass(frozen=True)
class InContextConfig:
    """Everything an in-context run depends on: the model, the task family (its fields), the training and the
    seed. The family's horizon is the model's number of layers (loops)."""

    model: ModelSpec = ModelSpec()
    family: dict = dataclasses.field(default_factory=dict)  # ICLFamily fields beyond the defaults
    train: TrainConfig = TrainConfig()
    seed: int = 0
    eval_tasks: int = 4096

    def validate(self) -> None:
        """Raises ``ValueError`` with a one-line message for the first invalid field."""
        unknown = [k for k in self.family if k not in FAMILY_FIELDS]
        if unknown:
            raise ValueError(f"unknown in-context family field {unknown[0]!r}; known: {', '.join(FAMILY_FIELDS)}")
        runs.config_from_json(ICLFamily, self.family, prefix="family.", only=FAMILY_FIELDS)  # types, field by field
        self.family_obj()
        if self.eval_tasks < 1:
            raise ValueError("eval_tasks must be positive")
        if not 0 <= self.seed < 2 ** 63:  # what jax.random.key takes
            raise ValueError(f"seed must be from 0 to 2**63 - 1, got {self.seed}")

    def family_obj(self) -> ICLFamily:
        return ICLFamily(horizon=self.model.layers, **self.family)

    def to_json(self) -> dict:
        return {"kind": "incontext", "model": dataclasses.asdict(self.model), "family": dict(self.family),
                **dataclasses.asdict(self.train), "seed": self.seed, "eval_tasks": self.eval_tasks}

    @classmethod
    def from_json(cls, data: dict) -> "InContextConfig":
        """The config a ``to_json`` dict describes; ``ValueError`` naming the first unknown, missing or wrongly
        typed field."""
        if not isinstance(data, dict):
            raise ValueError(f"the config must be an object, got {type(data).__name__}")
        data = dict(data)
        if data.pop("kind", None) != "incontext":
            raise ValueError("not the config of an in-context run (its field 'kind' is not \"incontext\")")
        for name in ("model", "family"):
            if name not in data:
                raise ValueError(f"field {name!r} is missing")
        train = {f.name: data.pop(f.name) for f in dataclasses.fields(TrainConfig) if f.name in data}
        model = runs.config_from_json(ModelSpec, data.pop("model"), prefix="model.")
        family = data.pop("family")
        if not isinstance(family, dict):
            raise ValueError(f"field 'family' must be an object, got {family!r}")
        top = runs.config_from_json(cls, data, only=("seed", "eval_tasks"))
        return cls(model, family, runs.config_from_json(TrainConfig, train), **top)

    def digest(self) -> str:
        """A short hash of the config's JSON: the identity of its run folder in a zoo."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:10]


def _keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(training, tracking, evaluation) keys of a run, all from its seed."""
    k_train, k_track, k_eval = jax.random.split(jax.random.key(seed), 3)
    return k_train, k_track, k_eval


def train_run(config: InContextConfig, out: Path | str, resume: bool = False,
              on_eval: Callable[[Any, Any], dict] | None = None,
              on_chunk: Callable[[int, dict], None] | None = None) -> dict:
    """Trains ``config`` into the run folder ``out`` (continuing its newest checkpoint if ``resume``); returns the
    summary also written to ``out/summary.json``. ``on_eval(graphdef, params)`` adds its numbers to every metrics
    line (at step 0 and after every chunk); ``on_chunk(step, line)`` is called after every chunk."""
    out = Path(out)
    runs.prepare(config.to_json(), config.validate, out, resume, RESUMABLE_CHANGES, "steps", _normalize)
    with runs.lock_run(out):  # one writer for the whole run: a second is refused, naming this process
        return _train_locked(config, out, resume, on_eval, on_chunk)


def _normalize(saved: dict) -> dict:
    """A saved config as this code reads it; ``ValueError`` naming the field of a damaged one."""
    return InContextConfig.from_json(saved).to_json()


def _metrics_line(line: dict) -> str:
    """A metrics line as strict JSON (non-finite numbers as ``null``) with the wall-clock ``time`` (Unix s)."""
    return dumps({**line, "time": round(time.time(), 3)}) + "\n"


def _train_locked(config: InContextConfig, out: Path, resume: bool, on_eval, on_chunk) -> dict:
    """``train_run``'s body, holding the folder's lock (the checks again under it, as ``lab.meta.run`` does)."""
    saved = runs.prepare(config.to_json(), config.validate, out, resume, RESUMABLE_CHANGES, "steps", _normalize)
    runs.clean_leftovers(out)
    family, train = config.family_obj(), config.train
    k_train, k_track, k_eval = _keys(config.seed)
    k_init, k_tasks = jax.random.split(k_train)
    graphdef, params = build(config.model, family.dim, k_init)
    tx = optimizer(train)
    manager = runs.checkpoints(out)
    metrics_path = out / "metrics.jsonl"
    try:
        state = runs.restore(manager, TrainState(params, tx.init(params), jnp.zeros((), jnp.int32)),
                             config.to_json(), out, RESUMABLE_CHANGES, repair=True, normalize=_normalize)
        done = int(state.step)
        runs.trim_metrics(metrics_path, done)
    except BaseException:
        manager.close()
        raise
    write_json_atomic(out / "config.json", config.to_json())  # only once the run to continue is known good
    runs.record_session(out, saved, config.to_json(), done, "steps")
    chunks: dict[int, Callable] = {}
    with open(metrics_path, "a") as log:
        if done == 0 and on_eval is not None:
            log.write(_metrics_line({"step": 0, **on_eval(graphdef, state.params)}))
        while done < train.steps:
            n = min(train.eval_every, train.steps - done)
            if n not in chunks:
                chunks[n] = jax.jit(make_chunk(graphdef, family, tx, train.batch, n, k_tasks))
            state, losses = chunks[n](state)
            done += n
            line = {"step": done, "loss": float(jnp.mean(losses)),
                    **(on_eval(graphdef, state.params) if on_eval is not None else {})}
            log.write(_metrics_line(line))
            log.flush()
            runs.save(manager, done, state, config.to_json())
            if on_chunk is not None:
                on_chunk(done, line)
    manager.wait_until_finished()
    manager.close()
    held_out = family.sample_batch(k_eval, config.eval_tasks)
    loss = float(query_loss(graphdef, state.params, held_out))
    (_,), gd1_loss = references.gd_optimum(family, 1)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]
    summary = {"kind": "incontext", "model": dataclasses.asdict(config.model), "steps": train.steps,
               "seed": config.seed, "final_loss": runs.read_metrics(metrics_path)[-1].get("loss"),
               "eval": {"tasks": config.eval_tasks, "loss": loss, "gd1_optimal_loss": gd1_loss},
               "params_sha256": hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves)).hexdigest()}
    write_json_atomic(out / "summary.json", summary)
    return summary


def load_run(out: Path | str):
    """``(config, graphdef, params, untrained params)`` of a finished or checkpointed in-context run folder."""
    out = Path(out)
    try:
        config = InContextConfig.from_json(runs.read_config(out))
        config.validate()
    except ValueError as e:
        raise runs.RunError(f"{out / 'config.json'}: {e}") from None
    family = config.family_obj()
    k_init, _ = jax.random.split(_keys(config.seed)[0])
    graphdef, untrained = build(config.model, family.dim, k_init)
    tx = optimizer(config.train)
    manager = runs.checkpoints(out, read_only=True)  # a reader writes nothing into the run folder
    try:
        if not manager.all_steps():
            raise runs.RunError(f"{out} has no checkpoint yet: train it first")
        state = runs.restore(manager, TrainState(untrained, tx.init(untrained), jnp.zeros((), jnp.int32)),
                             config.to_json(), out, RESUMABLE_CHANGES, normalize=_normalize)
    finally:
        manager.close()
    return config, graphdef, state.params, untrained


def load_learner(out: Path | str):
    """``(optimizer, family, untrained optimizer)`` of an in-context run: the trained model as an ``Optimizer`` on
    the implied weights (``lab.incontext.learner.attention``), its family, and the same model at its initial
    parameters (the linear probes' control)."""
    config, graphdef, params, untrained = load_run(out)
    family = config.family_obj()
    return (learner.attention(graphdef, params, config.model, family), family,
            learner.attention(graphdef, untrained, config.model, family))
