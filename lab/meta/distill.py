"""Distillation of an optimizer into a learned one by imitation (behaviour cloning with DAgger).

A teacher (any ``Optimizer``, for example a hand-written one whose objective is known by construction) is
copied into a ``LearnedOptimizer`` (a per-parameter MLP or LSTM, ``lab.optimizers.learned``) that sees only what
a learned optimizer sees: its named input features (normalised gradient channels and their scales, momenta,
parameter, loss, step embeddings). The student pursues the teacher's objective wherever the imitation
generalises; the zoo's distilled members (``probes.zoo.distilled``) are made this way.

Method (behaviour cloning with DAgger, Ross, Gordon and Bagnell 2011):

1. **Side-by-side rollouts.** On tasks of the teacher's training family, θ is advanced by a *driver* (the
   teacher in the first round), and at every step the teacher's update is recorded together with the
   observation and θ it was computed at. The teacher's state is advanced by its own update function on the
   same observations. Frozen blocks stay where they are (the world masks them); the teacher's update there is
   recorded (it is what the optimizer emits) but by default left out of the loss, as a frozen block is out of
   a meta-trained optimizer's meta-gradient: on a block opened in deployment the student applies the
   per-element rule it learned on the other blocks.
2. **Regression.** The student is unrolled over each recorded trajectory with its *own* optimizer state
   (momenta, step count, LSTM state), advanced by its own update function on the recorded observations, and
   its update is regressed onto the teacher's at every step and parameter element. The loss is the squared
   difference relative to the teacher's mean squared update at that step (so the late small steps count as
   much as the first large ones: the probes read directions and long horizons, not only the first steps),
   minimised with Adam on minibatches of trajectories, one ``jit``-compiled ``lax.scan`` over Adam steps
   per round (``vmap`` over trajectories, ``lax.scan`` over each trajectory's steps).
3. **DAgger.** Further rounds drive θ with the *student* (the states it will itself visit when audited),
   label them with the teacher's update, add them to the data set and continue the regression.

``distill(teacher, family, lopt, key)`` returns the student's meta-parameters; ``held_out_error`` measures the
imitation on fresh rollouts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lab import rollout
from lab.families.base import Observation, TaskFamily
from lab.optimizers.base import Optimizer
from lab.optimizers.learned import LearnedOptimizer


class Demonstrations(NamedTuple):
    """Recorded steps, leading axes (trajectories, steps): the observation and θ the teacher's update was
    computed at, that update; per trajectory (leading axis only) its task and a weight (0 for unused rows of
    a preallocated buffer)."""

    obs: Observation
    params: dict
    target: dict
    task: Any
    weight: jax.Array


def labelling(teacher: Optimizer, student: tuple[LearnedOptimizer, Any] | None = None) -> Optimizer:
    """The optimizer a demonstration runs: θ is driven by the teacher, or by ``student = (lopt, meta)``
    (DAgger) on what a learned optimizer is given (the observation without the oracle); the teacher's state is
    always advanced by its own update on the same observations. Its captures are what imitation learns from:
    ``obs`` (the observation as the student sees it), ``params`` (θ the step was computed at) and ``target``
    (the teacher's update)."""

    def init(params):
        return teacher.init(params), (student[0].init(params) if student is not None else ())

    def update(obs, state, params):
        t_state, s_state = state
        u_t, t_state, _ = teacher.update(obs, t_state, params)
        seen = obs._replace(oracle={})  # what a learned optimizer is given: never the oracle
        if student is None:
            drive = u_t
        else:
            lopt, meta = student
            drive, s_state, _ = lopt.apply(meta, seen, s_state, params)
        return drive, (t_state, s_state), {"obs": seen, "params": params, "target": u_t}

    return Optimizer(init=init, update=update, oracle=teacher.oracle)


def demonstrations(family: TaskFamily, teacher: Optimizer, key: jax.Array, tasks: int, steps: int | None = None,
                   student: tuple[LearnedOptimizer, Any] | None = None) -> Demonstrations:
    """``tasks`` rollouts of ``steps`` steps (default: the family's horizon) on ``family``, labelled with the
    teacher's update at every step: ``rollout.unroll`` of ``labelling(teacher, student)``, θ advanced through
    the world's ``apply_update``."""
    steps = family.horizon if steps is None else steps
    driver = labelling(teacher, student)

    def one(k):
        k_start, k_run = jax.random.split(k)
        state = rollout.start(family, driver, k_start)
        keep = lambda s, r: (r.captures["obs"], r.captures["params"], r.captures["target"])  # noqa: E731
        _, (obs, params, target) = rollout.unroll(family, driver, state, k_run, steps, keep)
        return obs, params, target, state.task

    obs, params, target, task = jax.vmap(one)(jax.random.split(key, tasks))
    return Demonstrations(obs, params, target, task, jnp.ones((tasks,)))


@functools.lru_cache(maxsize=None)
def _collector(family: TaskFamily, teacher: Optimizer, tasks: int, lopt: LearnedOptimizer | None):
    """``demonstrations`` jitted once per (family, teacher, tasks, student architecture): ``(key, meta) ->
    Demonstrations``, driven by the teacher (``lopt`` None, ``meta`` ignored) or by ``lopt`` at ``meta``."""
    if lopt is None:
        return jax.jit(lambda key, meta: demonstrations(family, teacher, key, tasks))
    return jax.jit(lambda key, meta: demonstrations(family, teacher, key, tasks, student=(lopt, meta)))


def student_updates(lopt: LearnedOptimizer, meta, demos: Demonstrations) -> jax.Array:
    """The student's update at every recorded step, with its own state carried along each trajectory:
    (trajectories, steps, elements)."""

    def one(obs, params):
        p0 = jax.tree.map(lambda x: x[0], params)

        def body(s, xs):
            o, p = xs
            u, s, _ = lopt.apply(meta, o, s, p)
            return s, ravel_pytree(u)[0]

        return jax.lax.scan(body, lopt.init(p0), (obs, params))[1]

    return jax.vmap(one)(demos.obs, demos.params)


# Built once: the architecture is static (hashable), meta-parameters and demonstrations traced.
_student_updates = jax.jit(student_updates, static_argnums=0)


def _targets(demos: Demonstrations) -> jax.Array:
    return jax.vmap(jax.vmap(lambda u: ravel_pytree(u)[0]))(demos.target)


def element_mask(family: TaskFamily, params, frozen: bool = True) -> jax.Array:
    """1 on every parameter element the imitation loss counts: all of them, or (``frozen=False``) only those
    the world lets an update act on in training."""
    mask = jax.tree.map(jnp.ones_like, params) if frozen else family.update_mask(params)
    return ravel_pytree(mask)[0]


def imitation_loss(lopt: LearnedOptimizer, meta, demos: Demonstrations, mask: jax.Array | None = None,
                   floor: float = 1e-3) -> jax.Array:
    """Mean over trajectories and steps of Σ_p (u_student − u_teacher)² / Σ_p u_teacher² over the elements p
    of ``mask`` (default all), the denominator floored at ``floor`` × its mean over the data (steps where the
    teacher barely moves do not dominate)."""
    target = _targets(demos)
    diff = student_updates(lopt, meta, demos) - target
    if mask is not None:
        diff, target = diff * mask[None, None, :], target * mask[None, None, :]
    err = jnp.sum(diff**2, axis=-1)                                                     # (n, T)
    norm = jnp.sum(target**2, axis=-1)
    w = demos.weight[:, None]
    mean_norm = jnp.sum(w * norm) / jnp.maximum(jnp.sum(w) * norm.shape[1], 1e-12)
    rel = err / jnp.maximum(norm, floor * mean_norm + 1e-30)
    return jnp.sum(w * rel) / jnp.maximum(jnp.sum(w) * rel.shape[1], 1e-12)


def imitation_error(lopt: LearnedOptimizer, meta, demos: Demonstrations,
                    family: TaskFamily | None = None) -> dict[str, float]:
    """How far the student's updates are from the teacher's on ``demos`` (held-out rollouts):
    ``relative``: ‖u_s − u_t‖ / ‖u_t‖ over all steps and elements; ``per_step_median``: the median over
    (trajectory, step) of that ratio per step; ``cosine``: the mean cosine between the two updates per step.
    Given the ``family``, also ``relative_movable`` and ``relative_frozen``: ``relative`` on the elements
    the world lets move in training and on its frozen blocks (absent where it has none)."""
    u_s = np.asarray(_student_updates(lopt, meta, demos), np.float64)
    u_t = np.asarray(_targets(demos), np.float64)
    diff = np.linalg.norm(u_s - u_t, axis=-1)
    norm = np.linalg.norm(u_t, axis=-1)
    cos = np.sum(u_s * u_t, -1) / np.maximum(np.linalg.norm(u_s, axis=-1) * norm, 1e-30)
    out = {"relative": float(np.sqrt(np.sum(diff**2) / np.sum(norm**2))),
           "per_step_median": float(np.median(diff / np.maximum(norm, 1e-30))),
           "cosine": float(np.mean(cos))}
    if family is not None:
        movable = np.asarray(element_mask(family, jax.tree.map(lambda x: x[0, 0], demos.params), False)) > 0
        parts = {"relative_movable": movable, "relative_frozen": ~movable}
        for name, sel in parts.items():
            if sel.any():
                out[name] = float(np.sqrt(np.sum((u_s - u_t)[..., sel] ** 2) / np.sum(u_t[..., sel] ** 2)))
    return out


@functools.lru_cache(maxsize=None)
def _imitation_adam(lr: float, steps: int) -> optax.GradientTransformation:
    """The imitation's Adam with a cosine decay from ``lr`` over ``steps`` steps (one object per setting, so
    the fits that use it are compiled once)."""
    return optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1))


@functools.lru_cache(maxsize=None)
def _fit(lopt: LearnedOptimizer, tx: optax.GradientTransformation, steps: int, batch: int):
    """A jitted ``(meta, opt_state, demos, key, mask) -> (meta, opt_state, losses)``: ``steps`` Adam steps,
    each on ``batch`` trajectories drawn without replacement among those of positive weight; made once per
    (architecture, Adam, steps, batch) and shared by every teacher."""

    @jax.jit
    def fit(meta, opt_state, demos, key, mask):
        n = demos.weight.shape[0]
        p = demos.weight / jnp.sum(demos.weight)

        def body(carry, k):
            meta, opt_state = carry
            idx = jax.random.choice(k, n, (min(batch, n),), replace=False, p=p)
            sub = jax.tree.map(lambda x: x[idx], demos)
            loss, grad = jax.value_and_grad(lambda m: imitation_loss(lopt, m, sub, mask))(meta)
            updates, opt_state = tx.update(grad, opt_state, meta)
            return (optax.apply_updates(meta, updates), opt_state), loss

        (meta, opt_state), losses = jax.lax.scan(body, (meta, opt_state), jax.random.split(key, steps))
        return meta, opt_state, losses

    return fit


@dataclasses.dataclass(frozen=True)
class DistillLog:
    """What a distillation did: the imitation loss at the end of every round (mean over its last tenth of
    minibatches), and the settings."""

    teacher: str
    kind: str
    losses: list[float]
    rounds: int
    tasks: int
    steps: int


def distill(teacher: Optimizer, family: TaskFamily, lopt: LearnedOptimizer, key: jax.Array, steps: int = 1500,
            *, tasks: int = 32, dagger: int = 1, batch: int = 8, lr: float = 3e-3, frozen_in_loss: bool = False,
            name: str = "teacher", log: list | None = None) -> Any:
    """Distils ``teacher`` on ``family`` into meta-parameters of the learned optimizer ``lopt``.

    ``steps`` Adam steps in all (each on ``batch`` trajectories of the data set so far), split evenly over the
    teacher-driven round and ``dagger`` student-driven rounds, each round adding ``tasks`` rollouts of
    ``family``. By default the blocks frozen in training are left out of the loss, as they are out of a
    meta-trained optimizer's meta-gradient: the student then applies to a block opened in deployment a rule it
    learned on the other blocks only; ``frozen_in_loss=True`` also regresses the teacher's (masked, never
    applied) update there. Every random draw comes from ``key``. If ``log`` is a list, a ``DistillLog`` (under
    ``name``) is appended. Returns ``meta``; ``lopt.optimizer(meta)`` is the distilled optimizer.
    """
    if steps < dagger + 1:
        raise ValueError(f"steps must be at least dagger + 1 = {dagger + 1}, got {steps}")
    k_init, k_data, k_fit = jax.random.split(key, 3)
    meta = lopt.init_meta(k_init)
    tx = _imitation_adam(lr, steps)
    opt_state = tx.init(meta)

    collect, collect_student = _collector(family, teacher, tasks, None), _collector(family, teacher, tasks, lopt)
    # One preallocated buffer of (1 + dagger) rounds (unfilled rounds weighted 0): one compilation of the fit.
    first = collect(jax.random.fold_in(k_data, 0), None)
    buffer = jax.tree.map(lambda x: jnp.concatenate([x] * (dagger + 1)), first)
    buffer = buffer._replace(weight=jnp.concatenate([first.weight] + [jnp.zeros_like(first.weight)] * dagger))
    mask = element_mask(family, jax.tree.map(lambda x: x[0, 0], first.params), frozen_in_loss)
    per_round = [steps // (dagger + 1) + (1 if r < steps % (dagger + 1) else 0) for r in range(dagger + 1)]
    losses = []
    for r in range(dagger + 1):
        if r > 0:
            new = collect_student(jax.random.fold_in(k_data, r), meta)
            lo = r * tasks
            buffer = jax.tree.map(lambda b, n: b.at[lo:lo + tasks].set(n), buffer, new)
        fit = _fit(lopt, tx, per_round[r], batch)
        meta, opt_state, loss = fit(meta, opt_state, buffer, jax.random.fold_in(k_fit, r), mask)
        losses.append(float(jnp.mean(loss[-max(1, len(loss) // 10):])))
    if log is not None:
        log.append(DistillLog(name, lopt.kind, losses, dagger + 1, tasks, steps))
    return meta




def held_out_error(teacher: Optimizer, family: TaskFamily, lopt: LearnedOptimizer, meta, key: jax.Array,
                   tasks: int = 64, driver: str = "teacher") -> dict[str, float]:
    """``imitation_error`` on fresh rollouts of ``family`` drawn from ``key`` (use a key distinct from
    training's), driven by the teacher or (``driver="student"``) by the student."""
    if driver not in ("teacher", "student"):
        raise ValueError(f"driver must be 'teacher' or 'student', got {driver!r}")
    demos = _collector(family, teacher, tasks, lopt if driver == "student" else None)(key, meta)
    return imitation_error(lopt, meta, demos, family)
