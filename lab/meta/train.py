"""The meta-training loop (the base optimizer of Hubinger et al. 2019): φ ← φ − outer_step(∇ meta-loss).

``MetaConfig`` is everything a run depends on; ``init_state`` and ``meta_step`` are pure (one ``jit`` per
meta-step, placed by the caller); ``lab.meta.run`` wraps them into run folders with checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import families, sharding
from lab.meta.estimators import Estimator, make_estimator
from lab.meta.truncation import make_truncation
from lab.optimizers.learned import LearnedOptimizer, default_inputs, parse_feature

ESTIMATORS = ("tbptt", "es", "pes")
OPTIMIZERS = ("mlp", "lstm")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Everything a meta-training run depends on (saved as ``config.json`` in the run folder).

    The horizon is the family's; ``truncation`` inner steps make one meta-step, on ``tasks`` tasks at once.
    """

    family: str = "quadratic"
    optimizer: str = "mlp"
    estimator: str = "tbptt"
    meta_steps: int = 400
    seed: int = 0
    tasks: int = 32
    truncation: int = 10
    meta_lr: float = 3e-3
    # Cosine decay of the meta learning rate from ``meta_lr`` to this over the run's ``meta_steps`` (None: constant).
    # Left out of config.json when None, like ``features``. A decayed run cannot be extended by ``--resume``: the
    # schedule spans the steps it was started for.
    meta_lr_final: float | None = None
    grad_clip: float = 1.0
    loss_clip: float = 3.0
    loss_floor: float | None = None  # lower clip of the per-step log ratio (None: unclipped)
    es_sigma: float = 0.01
    hidden: int = 32
    # Rematerialise each inner step in the backward pass: a quarter of the memory, and on CPU also faster
    # (0.83x the time at the default config and for mlp at 256 tasks, scripts/bench.py: less memory traffic).
    remat: bool = True
    checkpoint_every: int = 100
    eval_tasks: int = 128
    # The learned optimizer's input features (lab.optimizers.learned); None: ``default_inputs`` of the family's
    # declared channels and observed cues. Left out of config.json when None, so default runs keep their hash.
    features: tuple[str, ...] | None = None
    # Rows of the final evaluation beyond the training horizon (lab.meta.evaluate.evaluation_rows): multiples of
    # the horizon and named shifts of the family. Left out of config.json when empty, like ``features``.
    eval_horizons: tuple[int, ...] = ()
    eval_shifts: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("features", "eval_horizons", "eval_shifts"):  # a JSON list, hashable for jit
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def for_family(cls, family: str, **fields) -> MetaConfig:
        """The config of a run on the registered ``family``: the defaults, then the family's own
        (``TaskFamily.meta_defaults``, e.g. a longer run for a larger family), then ``fields`` (what the user
        set). ``train.py`` builds its config here, so a flag left out takes the family's default."""
        own = dict(families.make(family).meta_defaults)
        known = {f.name for f in dataclasses.fields(cls)} - {"family"}
        if unknown := sorted(set(own) - known):
            raise ValueError(f"family {family!r} declares meta_defaults for unknown config fields {unknown}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**{**own, **fields, "family": family})

    def validate(self) -> None:
        """Raises ``ValueError`` with a one-line message for the first invalid field."""
        if self.family not in families.names():
            raise ValueError(f"unknown family {self.family!r}; known: {', '.join(families.names())}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; known: {', '.join(ESTIMATORS)}")
        for name in ("meta_steps", "tasks", "truncation", "hidden", "checkpoint_every", "eval_tasks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("meta_lr", "grad_clip", "es_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2 ** 63:  # what jax.random.key takes; beyond it, it overflows mid-run
            raise ValueError(f"seed must be from 0 to 2**63 - 1, got {self.seed}")
        if self.meta_lr_final is not None and not 0 < self.meta_lr_final <= self.meta_lr:
            raise ValueError(f"meta-lr-final must be positive and at most meta-lr ({self.meta_lr}), got "
                             f"{self.meta_lr_final}")
        for name in ("meta_lr", "meta_lr_final", "grad_clip", "es_sigma", "loss_clip", "loss_floor"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # inf would train to NaN and still exit 0
                raise ValueError(f"{name.replace('_', '-')} must be a finite number, got {value}")
        if self.loss_floor is not None and not self.loss_floor < 0:
            raise ValueError(f"loss-floor must be negative (a log ratio below the start), got {self.loss_floor}")
        if self.features is not None:
            self._validate_features()
        if any(not isinstance(m, int) or m < 1 for m in self.eval_horizons):
            raise ValueError(f"eval-horizons must be positive integers, got {','.join(map(str, self.eval_horizons))}")
        if self.eval_shifts:
            known = self.family_obj().shifts()
            if unknown := [s for s in self.eval_shifts if s not in known]:
                raise ValueError(f"unknown eval shift {unknown[0]!r} for family {self.family!r}; known: "
                                 f"{', '.join(known)}")

    def _validate_features(self) -> None:
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be a non-empty list without repeats, got {','.join(self.features)!r}")
        family = self.family_obj()
        for name in self.features:
            part = parse_feature(name)
            channel, cue = part.get("channel"), part.get("cue")
            if channel is not None and channel not in family.channels:
                raise ValueError(f"feature {name!r} reads channel {channel!r}, which family {self.family!r} does not "
                                 f"declare; its channels: {', '.join(family.channels) or 'none'}")
            if cue is not None and cue not in family.cues():
                raise ValueError(f"feature {name!r} reads cue {cue!r}, which family {self.family!r} does not "
                                 f"carry; its cues: {', '.join(family.cues())}")

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        if data["meta_lr_final"] is None:
            del data["meta_lr_final"]  # the default: config.json (and its hash) as before the field
        if data["features"] is None:
            del data["features"]  # the default: config.json (and the zoo's config hash) as before the field
        else:
            data["features"] = list(data["features"])
        for name in ("eval_horizons", "eval_shifts"):  # the default: config.json (and its hash) as before the field
            if data[name]:
                data[name] = list(data[name])
            else:
                del data[name]
        return data

    @classmethod
    def from_json(cls, data: dict) -> MetaConfig:
        """The config a ``to_json`` dict describes; ``ValueError`` naming the first unknown or wrongly typed
        field (fields missing from an older config take their defaults)."""
        from lab.runs import config_from_json  # here: lab.runs imports orbax, which plain configs do not need

        return config_from_json(cls, data)

    def family_obj(self) -> families.TaskFamily:
        return families.make(self.family)

    def learned_optimizer(self) -> LearnedOptimizer:
        family = self.family_obj()
        inputs = default_inputs(family.channels, family.observed_cues) if self.features is None else self.features
        return LearnedOptimizer(kind=self.optimizer, inputs=inputs, hidden=self.hidden)


class MetaState(NamedTuple):
    """Meta-parameters, outer optimizer state, estimator (truncation) state, raw PRNG key data, step."""

    meta: Any
    outer_state: Any
    estimator_state: Any
    key: jax.Array
    step: jax.Array


def outer_optimizer(config: MetaConfig) -> optax.GradientTransformation:
    """Adam on φ after global-norm clipping, at ``meta_lr`` or cosine-decayed to ``meta_lr_final`` (Loshchilov &
    Hutter 2017, SGDR, without restarts); a non-finite meta-gradient skips the update and is counted
    (``optax.apply_if_finite``; a skipped step does not advance the schedule)."""
    lr = config.meta_lr if config.meta_lr_final is None else optax.cosine_decay_schedule(
        config.meta_lr, config.meta_steps, alpha=config.meta_lr_final / config.meta_lr)
    return optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(lr)),
        max_consecutive_errors=1_000_000)


def build(config: MetaConfig, family: families.TaskFamily | None = None
          ) -> tuple[LearnedOptimizer, Estimator, optax.GradientTransformation]:
    """The learned optimizer, the estimator and the outer optimizer a config describes. ``family``, if given,
    replaces the config's (the same family with other settings, as the benchmark's scaling rows use; a run
    folder records only the config, so ``lab.meta.run.train`` never passes one)."""
    family = config.family_obj() if family is None else family
    lopt = config.learned_optimizer()
    trunc = make_truncation(family, lopt, config.truncation, config.loss_clip, remat=config.remat,
                            loss_floor=config.loss_floor)
    return lopt, make_estimator(config.estimator, trunc, config.es_sigma), outer_optimizer(config)


# The fields of a config that neither the meta-step's program nor the initial state's reads: the seed enters
# as a key (an argument), the rest is bookkeeping. ``meta_steps`` joins them unless a decayed meta learning rate's
# schedule spans it (``outer_optimizer``).
_NOT_IN_PROGRAMS = ("seed", "checkpoint_every", "eval_tasks", "eval_horizons", "eval_shifts")


def program_config(config: MetaConfig) -> MetaConfig:
    """``config`` with every field its compiled programs do not read set to the default: the key under which a
    process (and jax's persistent cache, across processes) compiles them once, for every seed and length of run."""
    names = _NOT_IN_PROGRAMS + (("meta_steps",) if config.meta_lr_final is None else ())
    return dataclasses.replace(config, **{name: getattr(MetaConfig, name) for name in names})


def init_state(config: MetaConfig, family: families.TaskFamily | None = None) -> MetaState:
    """The meta-state at step 0, fully determined by ``config.seed`` (``family`` as in ``build``)."""
    return _init_state(program_config(config), family, jax.random.key(config.seed))


@functools.partial(jax.jit, static_argnums=(0, 1))  # one compile instead of hundreds of small eager ops
def _init_state(config: MetaConfig, family: families.TaskFamily | None, key: jax.Array) -> MetaState:
    lopt, estimator, outer = build(config, family)
    k_meta, k_est, k_run = jax.random.split(key, 3)
    meta = lopt.init_meta(k_meta)
    return MetaState(meta, outer.init(meta), estimator.init(k_est, config.tasks, meta),
                     jax.random.key_data(k_run), jnp.zeros([], jnp.int32))


def distribute(state: MetaState, config: MetaConfig) -> MetaState:
    """With several devices (and tasks that split evenly over them): the task axis of the estimator state
    sharded over all devices, everything else replicated. With one device, ``state`` unchanged. Over several
    processes (``lab.sharding.initialize``) the devices are every process's, each process holds the same whole
    ``state`` and keeps its share, and the tasks must split evenly."""
    if jax.process_count() > 1:
        if config.tasks % jax.device_count():
            raise ValueError(f"{config.tasks} tasks do not split evenly over the {jax.device_count()} devices of "
                             f"{jax.process_count()} processes")
        state = jax.tree.map(np.asarray, jax.device_get(state))  # host copies: each process places its share
    elif jax.device_count() == 1 or config.tasks % jax.device_count():
        return state
    mesh = sharding.task_mesh()
    state = sharding.replicate(state, mesh)
    return state._replace(estimator_state=sharding.shard_tasks(state.estimator_state, mesh))


def make_meta_step(config: MetaConfig, family: families.TaskFamily | None = None):
    """``meta_step(state) -> (state, metrics)``: one estimate, one outer update. Not jitted: jit it once.
    ``family`` as in ``build``."""
    _, estimator, outer = build(config, family)

    def meta_step(state: MetaState):
        key, k_grad = jax.random.split(jax.random.wrap_key_data(state.key))
        loss, grad, est_state = estimator.grad(state.meta, state.estimator_state, k_grad)
        updates, outer_state = outer.update(grad, state.outer_state, state.meta)
        meta = optax.apply_updates(state.meta, updates)
        metrics = {"meta_loss": loss, "grad_norm": optax.tree.norm(grad),
                   "skipped_total": outer_state.total_notfinite}
        return MetaState(meta, outer_state, est_state, jax.random.key_data(key), state.step + 1), metrics

    return meta_step


def meta_params_sha256(meta) -> str:
    """SHA-256 of the meta-parameters' leaves as bytes, in tree order."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(meta):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()
