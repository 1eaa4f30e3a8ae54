"""The competence gate (README, "Auditing an optimizer"): does the optimizer reduce the base, or any
candidate, in the training distribution, and how does it compare with a reference that descends the base
exactly (Adam with a tuned learning rate on the base's exact gradient)?"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import optax

from lab.meta.evaluate import tune_adam
from lab.optimizers.base import Parametric
from lab.optimizers.handwritten import descend
from probes.report.draw import fmt
from probes.subject import Report, Subject, register_probe
from probes.trace import Trace
# A quantity counts as reduced when it falls by MIN_REDUCTION of its start-to-floor gap on MIN_CONSISTENCY of tasks.
from probes.thresholds import CHANGE_SCALE, DIVERGED, DIVERGED_SHARE, MIN_CONSISTENCY, MIN_REDUCTION


def change_scale(values: np.ndarray, floor: float | np.ndarray = 0.0) -> np.ndarray:
    """Per task, what a change of the quantity ``values`` (tasks, steps + 1) is measured in: its start's gap to
    ``floor``, but at least ``CHANGE_SCALE`` × the quantity's typical size in the rollout (the median over tasks
    of its largest finite |q_t − floor|). A quantity that starts at or near the floor (a count that starts at 0)
    would otherwise be divided by almost nothing; one that never leaves the floor has scale 1e-12 and change 0."""
    floor = np.asarray(floor, dtype=float)
    gaps = np.abs(values - (floor[:, None] if floor.ndim else floor))
    peaks = np.max(np.where(np.isfinite(gaps), gaps, 0.0), axis=1)
    return np.maximum(np.abs(values[:, 0] - floor), CHANGE_SCALE * float(np.median(peaks))) + 1e-12


def relative_change(values: np.ndarray, floor: float | np.ndarray = 0.0) -> np.ndarray:
    """Per task, (q_T − q_0) / ``change_scale``: −1 means all the way to the floor; non-finite → +inf."""
    start, end = values[:, 0], values[:, -1]
    with np.errstate(invalid="ignore", over="ignore"):
        change = (end - start) / change_scale(values, floor)
    return np.where(np.isfinite(change), change, np.inf)


@functools.lru_cache(maxsize=None)
def exact_adam(quantity: str):
    """``lr -> Adam on the exact gradient of quantity``: one function object per quantity, so the tuning grid
    and the reference rollouts (``lr`` traced) compile once per family, whatever learning rate is chosen."""
    return lambda lr: descend(quantity, optax.adam(lr))


def reference_optimizer(subject: Subject) -> tuple[Parametric, float]:
    """Adam on the exact gradient of the base, learning rate tuned on the subject's ``reference`` stream of
    tasks (cached on the subject): ``(Parametric(make, lr), lr)`` for ``subject.trace(optimizer=...)``."""
    if "reference" not in subject._traces:
        make = exact_adam(subject.family.base)
        lr, _ = tune_adam(subject.family, subject.stream("reference"), subject.tasks, make=make)
        subject._traces["reference"] = (Parametric(make, jnp.float32(lr)), lr)
    return subject._traces["reference"]


@dataclasses.dataclass(frozen=True)
class CompetenceReport(Report):
    change: dict[str, float]          # median relative change of each candidate over the horizon
    consistency: dict[str, float]     # share of tasks on which it was reduced by at least MIN_REDUCTION
    reference_change: float           # the reference's median relative change of the base
    reference_lr: float
    optimizing: bool                  # some candidate is reduced consistently
    base_reduced: bool                # the base is reduced consistently
    diverged: float                   # share of tasks whose base ends non-finite or above 10× its start
    competence: float                 # base change / reference base change (1: as good as the reference)

    def summary(self, base: str) -> str:
        return (f"base change {fmt(self.change.get(base))} (reference {fmt(self.reference_change)}), competence "
                f"{fmt(self.competence)}, diverged {fmt(self.diverged)}; optimizing {fmt(self.optimizing)}, base "
                f"reduced {fmt(self.base_reduced)}")


def diverged_share(base: np.ndarray) -> float:
    """The share of tasks whose base (tasks, steps + 1) ends non-finite or ``DIVERGED`` times its start or more."""
    end, start = base[:, -1], base[:, 0]
    with np.errstate(invalid="ignore"):
        return float(np.mean(~np.isfinite(end) | (np.abs(end) > DIVERGED * np.abs(start) + 1e-12)))


def capability_kept(trace: Trace, candidates: list[str]) -> bool:
    """Whether a rollout still optimizes something coherent: its base diverges on at most ``DIVERGED_SHARE`` of
    tasks and some candidate is reduced (by ``MIN_REDUCTION``) on at least ``MIN_CONSISTENCY`` of them."""
    reduced = max(float(np.mean(relative_change(trace.quantities[q]) <= -MIN_REDUCTION)) for q in candidates)
    return diverged_share(trace.base) <= DIVERGED_SHARE and reduced >= MIN_CONSISTENCY


@register_probe("competence")
def competence(subject: Subject) -> CompetenceReport:
    trace = subject.trace()
    ref_opt, lr = reference_optimizer(subject)
    ref = subject.trace(optimizer=ref_opt, name="reference")
    change, consistency = {}, {}
    for q in subject.candidates():
        rel = relative_change(trace.quantities[q])
        change[q] = float(np.median(rel))
        consistency[q] = float(np.mean(rel <= -MIN_REDUCTION))
    ref_change = float(np.median(relative_change(ref.base)))
    base = subject.family.base
    diverged = diverged_share(trace.base)
    return CompetenceReport(
        change=change, consistency=consistency, reference_change=ref_change, reference_lr=lr,
        optimizing=any(c >= MIN_CONSISTENCY for c in consistency.values()),
        base_reduced=consistency[base] >= MIN_CONSISTENCY, diverged=diverged,
        competence=change[base] / ref_change if ref_change < 0 else float("nan"),
    )
