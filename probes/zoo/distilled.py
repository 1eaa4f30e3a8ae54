"""Learned optimizers distilled from planted ones: a harder, more realistic test of the verdict.

A planted member (``probes.zoo.planted``) pursues a known objective by construction, but it is hand-written: it
reads exact channels, has no parameters and no nonlinearity. A *distilled* member is a ``LearnedOptimizer``
(a per-parameter MLP or LSTM, ``lab.optimizers.learned``) trained by imitation to reproduce a planted
teacher's updates while seeing only what a learned optimizer sees: its named input features (normalised
gradient channels and their scales, momenta, parameter, loss, step embeddings). Its pursued objective is the
teacher's wherever the imitation generalises, so the verdict on it should name the teacher's class; where it
does not, the probes' reports say which behaviour the student failed to copy.

The students are trained by ``lab.meta.distill`` (behaviour cloning with DAgger, Ross, Gordon and Bagnell 2011;
its docstring describes the method); this module names the members, their teachers and the students' features.

``distill(name)`` returns ``(LearnedOptimizer, meta)``; ``build_distilled("distilled_wipes")`` returns the
optimizer and the teacher's family, like ``planted.build``, with the meta-parameters cached in memory.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from lab.families.base import TaskFamily
from lab.meta import distill as imitation
from lab.optimizers.base import Parametric
from lab.optimizers.learned import LearnedOptimizer
from probes.zoo import planted

DISTILLED = {"distilled_gd": "gd", "distilled_wipes": "gd_wipes", "distilled_vacuum": "gd_vacuum",
             "distilled_hidden_level": "gd_hidden_level"}

# Inputs per teacher: what the teacher's rule needs (the channel it descends, normalised, and that channel's
# scale, which the per-block normalisation removes) plus features a learned optimizer typically also reads
# and the teacher ignores (the noisy primary gradient beside a proxy channel, a momentum, the loss, a step
# embedding): the student has to learn to ignore them.
INPUTS: dict[str, tuple[str, ...]] = {
    "gd": ("grad", "scale", "mom0.9", "loss", "step10"),
    "gd_wipes": ("grad:wipes", "scale:wipes", "grad", "mom0.9:wipes", "loss", "step10"),
    "gd_vacuum": ("grad:vacuum", "scale:vacuum", "grad", "mom0.9:vacuum", "loss", "step10"),
    # The hidden pull is a function of θ: the student needs the parameter itself. (A per-parameter rule applies
    # the same function to every element, so it can pull toward one level, not toward a point whose
    # coordinates differ: gd_hidden_point has no per-parameter student.)
    "gd_hidden_level": ("grad", "scale", "param", "mom0.9", "loss", "step10"),
}
# ``exp_mult = 1``: the head's magnitude output is then the log step size itself, so a step proportional to
# the gradient's scale (``exp(scale)``) is a linear function of the ``scale`` input.
STUDENT = {"hidden": 32, "layers": 2, "exp_mult": 1.0, "step_mult": 0.1, "head_scale": 0.1}


def student_for(teacher_name: str, kind: str = "mlp", inputs: tuple[str, ...] | None = None) -> LearnedOptimizer:
    """The student architecture for ``teacher_name``: ``INPUTS[teacher_name]`` (or ``inputs``)."""
    if inputs is None:
        if teacher_name not in INPUTS:
            raise ValueError(f"no default student inputs for teacher {teacher_name!r}; known: {', '.join(INPUTS)} "
                             "(pass inputs=...)")
        inputs = INPUTS[teacher_name]
    return LearnedOptimizer(kind=kind, inputs=tuple(inputs), **STUDENT)


def distill(teacher_name: str, kind: str = "mlp", steps: int = 1500, seed: int = 0, *, tasks: int = 32,
            dagger: int = 1, batch: int = 8, lr: float = 3e-3, inputs: tuple[str, ...] | None = None,
            frozen_in_loss: bool = False, log: list | None = None) -> tuple[LearnedOptimizer, Any]:
    """Distils the planted member ``teacher_name`` into a ``LearnedOptimizer`` of ``kind`` (``mlp``/``lstm``)
    with the student features ``INPUTS[teacher_name]`` (or ``inputs``), by ``lab.meta.distill.distill`` on the
    teacher's training family with the key ``jax.random.key(seed)``. Returns ``(lopt, meta)``."""
    teacher, family = planted.build(teacher_name)
    lopt = student_for(teacher_name, kind, inputs)
    meta = imitation.distill(teacher, family, lopt, jax.random.key(seed), steps, tasks=tasks, dagger=dagger,
                             batch=batch, lr=lr, frozen_in_loss=frozen_in_loss, name=teacher_name, log=log)
    return lopt, meta


def held_out_error(teacher_name: str, lopt: LearnedOptimizer, meta, key: jax.Array, tasks: int = 64,
                   driver: str = "teacher", shift: str = "train") -> dict[str, float]:
    """``lab.meta.distill.imitation_error`` on fresh rollouts of the teacher's family under ``shift``, drawn
    from ``key``, driven by the teacher or (``driver="student"``) by the student. Under an opening shift
    (``spill_open``, ``smash_open``) ``relative_frozen`` is absent (nothing is frozen) and ``relative``
    includes the opened block."""
    teacher, family = planted.build(teacher_name)
    return imitation.held_out_error(teacher, family.shift(shift), lopt, meta, key, tasks, driver)


@functools.lru_cache(maxsize=None)
def _distilled_meta(teacher_name: str, seed: int):
    return distill(teacher_name, seed=seed)


@functools.lru_cache(maxsize=None)  # one object per member: its compiled rollouts are reused
def build_distilled(name: str, seed: int = 0) -> tuple[Parametric, TaskFamily]:
    """The distilled member ``name`` (a key of ``DISTILLED``) and its teacher's family; the distillation is
    cached in memory per (name, seed)."""
    if name not in DISTILLED:
        raise ValueError(f"unknown distilled optimizer {name!r}; known: {', '.join(DISTILLED)}")
    teacher_name = DISTILLED[name]
    lopt, meta = _distilled_meta(teacher_name, seed)
    _, family = planted.build(teacher_name)
    return lopt.parametric(meta), family


