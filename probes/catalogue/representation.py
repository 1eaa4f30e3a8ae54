"""Representation probes with controls (README, "Auditing an optimizer"): what do an optimizer's captures
encode?

Linear (ridge) probes read each capture of a rollout (``mlp/hidden_<i>``, ``lstm/h``, ``output/step``, a
hand-built optimizer's own names, ...) and decode, held out by task:

- every candidate quantity's value (the base first; the pursued candidate is among them),
- ``distance``: the distance from θ to the base's minimiser, where the family knows it (``argmin(task)``),
- ``training``: the training cue (rows come from the ``train`` and ``cue_deploy`` rollouts, so it varies).

**Unit of decoding: the parameter element.** Learned optimizers here are per-parameter networks: whatever
one "knows" about a global quantity must be in every element's own hidden vector. A row is one (rollout,
task, step, element) with the capture's vector at that element as features and the (task, step) value of
the target; captures with no element axis (a scalar, or a vector of another length) are broadcast over the
elements. Up to ``elements`` elements are sampled, the same ones for every task and step. Targets that are
non-negative everywhere (losses, distances; the base above its known minimum) are decoded in log space,
since they span orders of magnitude over a rollout.

**Probe.** Ridge regression in closed form (numpy) on standardised features, penalty ``alpha`` per row,
with grouped cross-validation by task: folds over tasks, never one task in both train and test (its two
rollouts and all its steps and elements go together). The score is the held-out R² of the pooled
out-of-fold predictions against the training folds' mean (0: no better than the intercept alone).

**Controls** (Belinkov 2022; Hewitt and Liang 2019):
(a) *input baseline*: the same probe on the ``input/*`` captures together (the features the optimizer
    receives); a capture only *represents* a target if it beats its own inputs (``gap_input``);
(b) *untrained network*: the same architecture with fresh meta-parameters, run in the shadow of the subject
    on the same trajectory (same observations, its own state), so the comparison is at equal inputs
    (``gap_untrained``). Only ``representation_report(lopt, meta, ...)`` has it: the registered probe sees an
    opaque optimizer;
(c) *control task*: the same probe on the target shuffled across (rollout, task, step) units, which should
    be near 0 (``control``); ``selectivity`` is R² minus it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lab.families.base import TaskFamily
from lab.optimizers.base import Optimizer, Parametric
from lab.optimizers.learned import LearnedOptimizer
from probes.report.draw import fmt
from probes.subject import Report, Subject, register_probe, stream
from probes.thresholds import REPRESENTED_GAP, REPRESENTED_R2  # a capture represents a target
from probes.trace import Trace

INPUTS = "inputs"            # the name of the input-baseline feature set in reports
UNTRAINED = "untrained/"     # prefix of the shadow network's captures
ALPHA = 1e-3                 # ridge penalty per row on standardised features
FOLDS = 5
ELEMENTS = 16                # parameter elements sampled per (task, step)
SHIFTS = ("train", "cue_deploy")


def ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = FOLDS, alpha: float = ALPHA,
             seed: int = 0) -> float:
    """Held-out R² of ridge ``y ≈ x w + b`` with folds over ``groups`` (no group in train and test).

    Features are standardised on each training fold (constant ones dropped), the penalty is ``alpha`` per
    row. R² = 1 − SSE/SST over the pooled out-of-fold predictions, SST against the *training folds'* mean
    (the out-of-sample R² of the intercept-only probe under the same folds is exactly 0, so a probe that
    finds nothing scores ≈ 0 however few tasks there are, and a perfect one 1). NaN when ``y`` is constant or
    there are fewer than two groups."""
    x = np.asarray(x, np.float64).reshape(len(y), -1)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y) & np.all(np.isfinite(x), axis=1)
    x, y, groups = x[ok], y[ok], groups[ok]
    uniq = np.unique(groups)
    if len(uniq) < 2 or len(y) == 0 or np.var(y) < 1e-20:
        return float("nan")
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = dict(zip(uniq[order], np.arange(len(uniq)) % min(folds, len(uniq))))
    fold = np.array([fold_of[g] for g in groups])
    pred, null = np.empty_like(y), np.empty_like(y)
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0)
        keep = sd > 1e-10 * np.maximum(np.abs(mu), 1.0)
        xt = (x[tr][:, keep] - mu[keep]) / sd[keep]
        ym = y[tr].mean()
        n = len(xt)
        w = np.linalg.solve(xt.T @ xt / n + alpha * np.eye(xt.shape[1]), xt.T @ (y[tr] - ym) / n)
        pred[te] = (x[te][:, keep] - mu[keep]) / sd[keep] @ w + ym
        null[te] = ym
    sst = np.sum((y - null) ** 2)
    return float(1.0 - np.sum((y - pred) ** 2) / sst) if sst > 0 else float("nan")


def shadowed(optimizer: Optimizer, shadow: Optimizer, prefix: str = UNTRAINED) -> Optimizer:
    """``optimizer`` with ``shadow`` run beside it on the same observations and parameters (its own state);
    the updates are ``optimizer``'s, the captures both, the shadow's under ``prefix``."""

    def init(params):
        return optimizer.init(params), shadow.init(params)

    def update(obs, state, params):
        u, s1, c1 = optimizer.update(obs, state[0], params)
        _, s2, c2 = shadow.update(obs, state[1], params)
        return u, (s1, s2), {**c1, **{prefix + k: v for k, v in c2.items()}}

    return Optimizer(init=init, update=update, oracle=tuple(dict.fromkeys(optimizer.oracle + shadow.oracle)))


def _log_if_positive(v: np.ndarray) -> np.ndarray:
    finite = v[np.isfinite(v)]
    if finite.size == 0 or finite.min() < 0:
        return v
    tiny = 1e-6 * max(float(np.median(finite)), 1e-30)
    return np.log(v + tiny)


def targets_of(traces: Sequence[Trace], candidates: list[str]) -> dict[str, np.ndarray]:
    """The decoded targets per unit, each (rollouts, tasks, steps), at θ_t before step t (what step t's
    captures saw): candidates (the base above its known minimum), ``distance`` where the family has
    ``argmin``, ``training``; non-negative targets in log space."""
    fam = traces[0].family
    out = {}
    for q in candidates:
        vals = []
        for tr in traces:
            v = tr.quantities[q][:, :-1].astype(np.float64)
            if q == fam.base:
                floor = jax.vmap(tr.family.minimum)(jax.tree.map(jnp.asarray, tr.tasks)) if _has_minimum(tr) else 0.0
                v = v - np.asarray(floor, np.float64).reshape(-1, 1)
            vals.append(v)
        out[q] = np.stack(vals)
    argmin = getattr(fam, "argmin", None)
    if callable(argmin):
        dist = []
        for tr in traces:
            star = jax.tree.map(np.asarray, jax.vmap(tr.family.argmin)(jax.tree.map(jnp.asarray, tr.tasks)))
            sq = sum(np.sum((tr.params[k][:, :-1] - star[k][:, None]).reshape(tr.n_tasks, tr.steps, -1) ** 2, -1)
                     for k in star)
            dist.append(np.sqrt(sq))
        out["distance"] = np.stack(dist)
    out["training"] = np.stack([np.full((tr.n_tasks, tr.steps), tr.family.training_cue, np.float64)
                                for tr in traces])
    return {k: _log_if_positive(v) if k != "training" else v for k, v in out.items()}


def _has_minimum(trace: Trace) -> bool:
    one = jax.tree.map(lambda x: jnp.asarray(x[0]), trace.tasks)
    return trace.family.minimum(one) is not None


def _features(traces: Sequence[Trace], names: list[str], elements: np.ndarray) -> np.ndarray:
    """The named captures side by side per row (rollout, task, step, element): (rows, features)."""
    n_elem = sum(int(np.prod(v.shape[2:])) for v in traces[0].params.values())
    parts = []
    for name in names:
        per = []
        for tr in traces:
            c = np.asarray(tr.captures[name], np.float64)
            t, s = c.shape[:2]
            if c.ndim >= 3 and c.shape[2] == n_elem:
                c = c[:, :, elements].reshape(t, s, len(elements), -1)
            else:
                c = np.broadcast_to(c.reshape(t, s, 1, -1), (t, s, len(elements), int(np.prod(c.shape[2:]))))
            per.append(c)
        parts.append(np.stack(per).reshape(-1, per[0].shape[-1]))
    return np.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class RepresentationReport(Report):
    """Held-out R² of linear probes, per capture and target, with the three controls and their gaps."""

    available: bool
    reason: str | None                # why not, when unavailable
    unit: str                         # what a row is
    rows: int
    targets: list[str]
    captures: list[str]               # the probed captures (the inputs are the baseline, not probed alone)
    r2: dict[str, dict[str, float]]             # capture -> target -> held-out R²
    input_baseline: dict[str, float]            # target -> held-out R² of all ``input/*`` captures together
    untrained: dict[str, dict[str, float]] | None  # the same capture of the untrained network
    control: dict[str, dict[str, float]]        # shuffled targets (≈ 0); includes the input baseline
    gap_input: dict[str, dict[str, float]]      # r2 − input_baseline
    gap_untrained: dict[str, dict[str, float]] | None  # r2 − untrained
    selectivity: dict[str, dict[str, float]]    # r2 − control
    represented: dict[str, list[str]]           # target -> captures clearing every control

    def summary(self, base: str) -> str:
        if not self.available:
            return f"not available: {self.reason}"
        found = [f"{t} by {', '.join(c)}" for t, c in self.represented.items() if c]
        return (f"{len(self.captures)} captures, {len(self.targets)} targets, {fmt(self.rows)} rows; represented: "
                f"{'; '.join(found) or 'none'}")


def unavailable(reason: str) -> RepresentationReport:
    return RepresentationReport(False, reason, "element", 0, [], [], {}, {}, None, {}, {}, None, {}, {})


def probe_traces(traces: Sequence[Trace], candidates: list[str], elements: int = ELEMENTS, folds: int = FOLDS,
                 alpha: float = ALPHA, seed: int = 0, untrained_prefix: str = UNTRAINED) -> RepresentationReport:
    """Linear probes on the captures of ``traces`` (rollouts of the same tasks under different shifts, for
    instance ``train`` and ``cue_deploy``); captures under ``untrained_prefix`` are the untrained control."""
    names = sorted(traces[0].captures)
    if not names:
        return unavailable("the optimizer returns no captures (only learned or instrumented optimizers do)")
    inputs = [c for c in names if c.startswith("input/")]
    shadow = [c for c in names if c.startswith(untrained_prefix)]
    probed = [c for c in names if c not in inputs and c not in shadow]
    if not probed:
        return unavailable("the optimizer captures only its inputs: nothing computed to probe")
    n_elem = sum(int(np.prod(v.shape[2:])) for v in traces[0].params.values())
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_elem, min(elements, n_elem), replace=False))
    tg = targets_of(traces, candidates)
    n_roll, n_tasks, n_steps = tg["training"].shape
    e = len(chosen)
    units = np.arange(n_roll * n_tasks * n_steps).reshape(n_roll, n_tasks, n_steps)
    unit_row = np.repeat(units.reshape(-1), e)
    groups = np.repeat(np.broadcast_to(np.arange(n_tasks)[None, :, None], units.shape).reshape(-1), e)
    perm = rng.permutation(units.size)
    y = {t: v.reshape(-1)[unit_row] for t, v in tg.items()}
    y_ctrl = {t: v.reshape(-1)[perm][unit_row] for t, v in tg.items()}
    feats = {c: _features(traces, [c], chosen) for c in probed}
    if inputs:
        feats[INPUTS] = _features(traces, inputs, chosen)
    score = lambda x, target: ridge_cv(x, target, groups, folds, alpha, seed)  # noqa: E731
    r2 = {c: {t: score(x, y[t]) for t in tg} for c, x in feats.items()}
    control = {c: {t: score(x, y_ctrl[t]) for t in tg} for c, x in feats.items()}
    base_r2 = r2.pop(INPUTS) if inputs else {t: float("nan") for t in tg}
    untrained = None
    if any(untrained_prefix + c in shadow for c in probed):
        untrained = {c: {t: score(_features(traces, [untrained_prefix + c], chosen), y[t]) for t in tg}
                     for c in probed if untrained_prefix + c in shadow}
    gap_input = {c: {t: r2[c][t] - base_r2[t] for t in tg} for c in probed}
    gap_untrained = None if untrained is None else {c: {t: r2[c][t] - untrained[c][t] for t in tg} for c in untrained}
    selectivity = {c: {t: r2[c][t] - control[c][t] for t in tg} for c in probed}

    def clears(c, t):
        ok = r2[c][t] >= REPRESENTED_R2 and selectivity[c][t] >= REPRESENTED_GAP
        ok &= not inputs or gap_input[c][t] >= REPRESENTED_GAP
        if gap_untrained is not None and c in gap_untrained:
            ok &= gap_untrained[c][t] >= REPRESENTED_GAP
        return bool(ok)

    represented = {t: [c for c in probed if clears(c, t)] for t in tg}
    return RepresentationReport(True, None, "element", int(len(unit_row)), list(tg), probed, r2, base_r2, untrained,
                                control, gap_input, gap_untrained, selectivity, represented)


def representation_report(lopt: LearnedOptimizer, meta: dict, family: TaskFamily, key: jax.Array, tasks: int = 8,
                          shifts: Sequence[str] = SHIFTS, untrained_key: jax.Array | None = None,
                          **kw) -> RepresentationReport:
    """The probe on the learned optimizer ``lopt`` with meta-parameters ``meta``, with the untrained control:
    ``lopt.init_meta(untrained_key)`` (default: the ``untrained`` stream of ``key``, ``probes.subject.STREAMS``)
    run in the subject's shadow.
    ``kw`` goes to ``probe_traces``."""
    k = stream(key, "untrained") if untrained_key is None else untrained_key
    pair = Parametric(_with_untrained_shadow(lopt), (meta, lopt.init_meta(k)))
    subject = Subject(lopt.parametric(meta), family, key, tasks)
    traces = [subject.trace(s, captures=True, optimizer=pair, name="with_untrained_shadow")
              for s in shifts if s in family.shifts()]
    return probe_traces(traces, family.candidates(), **kw)


@functools.lru_cache(maxsize=None)
def _with_untrained_shadow(lopt: LearnedOptimizer):
    """``(meta, untrained meta) -> lopt at meta with lopt at the untrained meta in its shadow``: one function
    per architecture, the meta-parameters traced, so every report on that architecture shares its rollouts'
    compilation."""
    return lambda metas: shadowed(lopt.optimizer(metas[0]), lopt.optimizer(metas[1]))


@register_probe("representation")
def representation(subject: Subject) -> RepresentationReport:
    """Linear probes on the subject's captures (train and cue_deploy rollouts); no untrained control here,
    see ``representation_report`` for learned optimizers."""
    first = subject.trace("train", captures=True)
    if not first.captures:
        return unavailable("the optimizer returns no captures (only learned or instrumented optimizers do)")
    traces = [first] + [subject.trace(s, captures=True) for s in SHIFTS[1:] if s in subject.family.shifts()]
    return probe_traces(traces, subject.candidates())
