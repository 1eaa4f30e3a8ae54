"""The competence gate (probing_methods.md P1): does the optimizer reduce the base, or any candidate, in the
training distribution, and how does it compare with a reference that descends the base exactly (Adam with
a tuned learning rate on the base's exact gradient)?"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

from lab.meta.evaluate import tune_adam
from lab.optimizers.handwritten import descend
from probes.subject import Report, Subject, register_probe

# A quantity counts as reduced when it falls by this share of its start-to-floor gap on this share of tasks.
MIN_REDUCTION = 0.05
MIN_CONSISTENCY = 0.9


def relative_change(values: np.ndarray, floor: float | np.ndarray = 0.0) -> np.ndarray:
    """Per task, (q_T − q_0) / (|q_0 − floor| + tiny): −1 means all the way to the floor; non-finite → +inf."""
    start, end = values[:, 0], values[:, -1]
    change = (end - start) / (np.abs(start - floor) + 1e-12)
    return np.where(np.isfinite(change), change, np.inf)


def reference_optimizer(subject: Subject):
    """Adam on the exact gradient of the base, learning rate tuned on other tasks (cached on the subject)."""
    if "reference" not in subject._traces:
        fam = subject.family
        make = lambda lr: descend(fam.base, optax.adam(lr))  # noqa: E731
        lr, _ = tune_adam(fam, jax.random.fold_in(subject.key, 7), subject.tasks, make=make)
        subject._traces["reference"] = (make(lr), lr)
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
    end, start = trace.base[:, -1], trace.base[:, 0]
    diverged = float(np.mean(~np.isfinite(end) | (np.abs(end) > 10 * np.abs(start) + 1e-12)))
    return CompetenceReport(
        change=change, consistency=consistency, reference_change=ref_change, reference_lr=lr,
        optimizing=any(c >= MIN_CONSISTENCY for c in consistency.values()),
        base_reduced=consistency[base] >= MIN_CONSISTENCY, diverged=diverged,
        competence=change[base] / ref_change if ref_change < 0 else float("nan"),
    )
