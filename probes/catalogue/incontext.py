"""Probes of in-context learners: which inner objective does a sequence model meta-trained on regression tasks
pursue when it fits a new task from its context, and how does it relate to the base (the query error)?

They run on an ordinary ``probes.subject.Subject`` whose family is the in-context family
(``lab.families.incontext``) and whose optimizer is the learner (``lab.incontext.learner``: one layer, or one
loop, per step on the implied weights ŵ = ∂ŷ/∂x_q), so the general probes run on the same subject beside them.
The check against a published result is von Oswald et al. 2022, "Transformers learn in-context by gradient
descent" (ICML 2023): a trained single linear self-attention layer is one GD step with the optimal step size,
and looped layers are GD++. Their alignment metrics compare a learner with a reference on the same tasks:

- ``preds_diff``: RMS over tasks of ``ŷ_model − ŷ_ref``;
- ``model_cos`` / ``model_diff``: the mean cosine and mean L2 distance between the model's implied weights
  (its end point, θ_T) and the reference's weights.

Registered probes (the in-context family lists them in ``probes``, so every audit of an in-context learner runs
them):

- ``icl_alignment``: the metrics above against every reference (``lab.incontext.references``), on every
  shift, with each learner's query loss; the closest reference per shift.
- ``icl_implied``: the implied parameters of the parametric references fitted to the model's predictions: step
  size η (one GD step), (η, γ) of GD++, ridge λ, beside their optima and σ²/τ².
- ``icl_fixed_point``: the learner applied repeatedly to its own residuals, ``w ← w + α ŵ(x, y − Xw)``; the fixed
  point against each candidate's argmin (a learner's fixed point is the objective it would reach with unlimited
  steps, which separates "one step on least squares" from "ridge").
- ``icl_shifts``: the base on every shift against the best learner the architecture can express (re-optimised
  on the shift) and the Bayes-optimal one; whether the model loses there.
- ``icl_linear_probe``: ridge probes (grouped by task) on the residual stream (the learner's captures) for the
  references' intermediate quantities, with controls: the input tokens, the untrained network
  (``Subject.untrained``) and shuffled targets (Hewitt and Liang 2019).

The in-context class rule (``in_context_rule``, registered for the family with ``register_rule``) is the one
place the verdict needs knowledge only this family has: the closed-form Bayes-optimal learner and which
references pursue a proxy.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lab import rollout
from lab.families.incontext import ICLFamily, tokens
from lab.incontext import references as icl_refs
from lab.incontext.learner import STREAM
from lab.optimizers.base import Optimizer
from probes.catalogue.representation import ridge_cv
from probes.report import draw
from probes.subject import Panel, Report, Subject, register_probe, register_rule
from probes.thresholds import (ICL_COMPETENT as COMPETENT, ICL_LOSES as LOSES, ICL_MATCHED_COS as MATCHED_COS,
                               ICL_REPRESENTED_GAP, ICL_REPRESENTED_R2, ICL_ROBUST_COS as ROBUST_COS,
                               ICL_ROBUST_EXCESS as ROBUST_EXCESS)

PROXIES = ("ls_masked", "pool_posterior")  # quantities that agree with the base only on the training tasks
DAMPING = 0.5            # fixed-point iteration step
FIXED_POINT_STEPS = 300
FIT_TASKS = 2000         # tasks the implied-parameter fits use
PROBE_TASKS = 512        # tasks the fixed point and the linear probes use


# -------------------------------------------------------------------------------------------------------
# The learner seen through its traces
# -------------------------------------------------------------------------------------------------------
fmt = draw.fmt


def _family(subject: Subject) -> ICLFamily:
    if not isinstance(subject.family, ICLFamily):
        raise ValueError("the icl_* probes audit learners on the in-context family (lab.families.incontext)")
    return subject.family


def model_view(subject: Subject, shift: str = "train") -> tuple[dict, np.ndarray, np.ndarray]:
    """(tasks, implied weights (n, d), predictions (n,)) of the learner on ``shift``: its end point θ_T after
    the horizon (its layers or loops) on the subject's paired tasks."""
    trace = subject.trace(shift)
    w = np.asarray(trace.params["w"][:, -1], np.float64)
    return trace.tasks, w, np.sum(w * np.asarray(trace.tasks["xq"], np.float64), axis=1)


def _batched(fn: Callable, **constants) -> Callable:
    """``jax.jit(jax.vmap(fn(task, **constants)))``, one per function and constants: subjects of one family
    share the references' compilations (``reference_set`` is cached per family, so its functions are the same
    objects, and the constants passed here are the family's optimal step sizes and λ, the same numbers each
    time). A ``functools.partial`` made per call would be a new function each time and compile again."""
    return _batched_program(fn, tuple(sorted(constants.items())))


@functools.lru_cache(maxsize=256)
def _batched_program(fn: Callable, constants: tuple) -> Callable:
    return jax.jit(jax.vmap(functools.partial(fn, **dict(constants))))


def reference_weights(family: ICLFamily, name: str, tasks: dict, layers: int) -> np.ndarray:
    """Weights (n, d) of reference ``name`` (parameters optimal on ``family``) on ``tasks``. One program per
    reference: XLA:CPU was seen to hang on one program holding several of the LAPACK-backed solves at once."""
    return np.asarray(_batched(icl_refs.reference_set(family, layers)[name].weights)(tasks), np.float64)


def alignment(w_model: np.ndarray, y_model: np.ndarray, w_ref: np.ndarray, xq: np.ndarray) -> dict[str, float]:
    """von Oswald et al.'s metrics: preds_diff (RMS), model_cos (mean cosine), model_diff (mean L2)."""
    y_ref = np.sum(w_ref * xq, axis=1)
    nm, nr = np.linalg.norm(w_model, axis=1), np.linalg.norm(w_ref, axis=1)
    cos = np.sum(w_model * w_ref, axis=1) / np.maximum(nm * nr, 1e-30)
    return {"preds_diff": float(np.sqrt(np.mean((y_model - y_ref) ** 2))), "model_cos": float(np.mean(cos)),
            "model_diff": float(np.mean(np.linalg.norm(w_model - w_ref, axis=1)))}


def base_loss(pred: np.ndarray, tasks: dict) -> float:
    return float(np.mean(0.5 * (pred - np.asarray(tasks["yq"], np.float64)) ** 2))


def _first(tasks: dict, n: int) -> dict:
    return jax.tree.map(lambda a: a[:n], tasks)


# -------------------------------------------------------------------------------------------------------
# icl_alignment
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShiftAlignment:
    loss: float                       # the model's base (query error) on this shift
    reference_loss: dict[str, float]  # each reference's base on this shift
    metrics: dict[str, dict]          # reference -> {"preds_diff", "model_cos", "model_diff"}
    closest: str                      # the reference with the smallest preds_diff


@dataclasses.dataclass(frozen=True)
class AlignmentReport(Report):
    references: dict[str, str]        # name -> description
    quantity: dict[str, str]          # name -> the inner objective it pursues
    shifts: dict[str, ShiftAlignment]

    def summary(self, base: str) -> str:
        train = self.shifts["train"]
        ref = train.closest
        lost = [s for s, a in self.shifts.items() if a.closest != ref]
        return (f"closest in training: {ref} (cosine {fmt(train.metrics[ref]['model_cos'])}, query error "
                f"{fmt(train.loss)} vs {fmt(train.reference_loss[ref])}); another reference is closest on "
                f"{', '.join(lost) or 'no shift'}")

    def figures(self, base: str, pursued: str | None) -> list[Panel]:
        """Per shift, the model's cosine with every reference and the prediction RMS difference (log), with a
        legend naming each reference and the inner objective it pursues."""
        shifts, refs = list(self.shifts), list(self.references)
        fig = draw.figure(figsize=(11, 3.4))
        ax_c, ax_p = fig.subplots(1, 2)
        x, width = np.arange(len(shifts)), 0.8 / max(len(refs), 1)
        for k, ref in enumerate(refs):
            cos = [self.shifts[s].metrics[ref]["model_cos"] for s in shifts]
            diff = [self.shifts[s].metrics[ref]["preds_diff"] for s in shifts]
            label = f"{ref} ({self.quantity[ref]})"
            ax_c.bar(x + k * width, draw.finite(cos), width, label=label)
            ax_p.bar(x + k * width, np.maximum(draw.finite(diff), 1e-12), width, label=label)
        for ax, title in ((ax_c, "model cosine with each reference"), (ax_p, "prediction RMS difference")):
            ax.set_xticks(x + 0.4 - width / 2, shifts, fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        ax_p.set_yscale("log")
        ax_c.legend(fontsize=7, loc="lower left")
        closest = html.escape(self.shifts["train"].closest)
        return [Panel("Alignment with the reference learners", draw.png(fig), (
            "<b>Alignment with the reference learners</b> (von Oswald et al. 2022) on every shift: the cosine of "
            "the model's implied weights with each reference's, and the RMS difference of their predictions. "
            f"Closest in training: <b>{closest}</b>."))]


@register_probe("icl_alignment")
def icl_alignment(subject: Subject) -> AlignmentReport:
    """Alignment metrics of the learner against every reference on every shift."""
    family = _family(subject)
    refs = icl_refs.reference_set(family, family.horizon)
    out = {}
    for shift in family.shifts():
        tasks, w_m, y_m = model_view(subject, shift)
        xq = np.asarray(tasks["xq"], np.float64)
        metrics, losses = {}, {}
        for name in refs:
            w_r = reference_weights(family, name, tasks, family.horizon)
            metrics[name] = alignment(w_m, y_m, w_r, xq)
            losses[name] = base_loss(np.sum(w_r * xq, axis=1), tasks)
        closest = min(metrics, key=lambda n: metrics[n]["preds_diff"])
        out[shift] = ShiftAlignment(base_loss(y_m, tasks), losses, metrics, closest)
    return AlignmentReport({n: r.description for n, r in refs.items()}, {n: r.quantity for n, r in refs.items()},
                           out)


# -------------------------------------------------------------------------------------------------------
# icl_implied
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImpliedReport(Report):
    eta: float | None                 # one GD step (on the unmasked features if the family masks one)
    eta_fit_rms: float | None
    eta_optimal: float
    gd_steps: list[float] | None      # K per-step sizes fitted, for K = layers > 1
    gdpp: dict[str, float] | None     # {"eta", "gamma", "rms"} fitted, layers > 1
    gdpp_optimal: dict[str, float] | None
    ridge_lambda: float
    ridge_fit_rms: float
    bayes_lambda: float               # σ²/τ²
    gd1_optimal_lambda: float         # the λ the same fit gives for the optimal one-step GD itself

    def summary(self, base: str) -> str:
        gdpp = (f"; GD++ η {fmt(self.gdpp['eta'])} γ {fmt(self.gdpp['gamma'])} (optimum "
                f"{fmt(self.gdpp_optimal['eta'])}, {fmt(self.gdpp_optimal['gamma'])})" if self.gdpp else "")
        return (f"η {fmt(self.eta)} (optimal one step {fmt(self.eta_optimal)}){gdpp}; ridge λ "
                f"{fmt(self.ridge_lambda)} (Bayes σ²/τ² {fmt(self.bayes_lambda)}, optimal GD step's "
                f"{fmt(self.gd1_optimal_lambda)})")


def _least_squares(residual: Callable, x0, *args) -> tuple[np.ndarray, float]:
    """Gauss-Newton fit of ``residual(p, *args)`` (jitted once per residual function) over a parameter vector
    ``p``; (params, RMS residual)."""
    f, jac = _compiled_residual(residual)
    sol = scipy.optimize.least_squares(
        lambda p: np.asarray(f(jnp.asarray(p, jnp.float32), *args), np.float64), x0,
        jac=lambda p: np.asarray(jac(jnp.asarray(p, jnp.float32), *args), np.float64), x_scale="jac")
    return sol.x, float(np.sqrt(np.mean(sol.fun**2)))


@functools.lru_cache(maxsize=None)
def _compiled_residual(residual: Callable):
    return jax.jit(residual), jax.jit(jax.jacfwd(residual))


def _gd_residual(steps: int):
    """``(etas, tasks, y) -> ŷ_GD − y`` for ``steps`` GD steps with their own sizes (one function per depth)."""
    return _gd_residuals.setdefault(steps, lambda p, tasks, y: jnp.sum(jax.vmap(
        lambda t: icl_refs.gd_weights(t, tuple(p[i] for i in range(steps))))(tasks) * tasks["xq"], 1) - y)


def _gdpp_residual(steps: int):
    """``((η, γ), tasks, y) -> ŷ_GD++ − y`` over ``steps`` layers (one function per depth)."""
    return _gdpp_residuals.setdefault(steps, lambda p, tasks, y: jnp.sum(jax.vmap(
        lambda t: icl_refs.gdpp_weights(t, p[0], p[1], steps))(tasks) * tasks["xq"], 1) - y)


_gd_residuals: dict[int, Callable] = {}
_gdpp_residuals: dict[int, Callable] = {}


@jax.jit
def _ridge_rms(log_lam, tasks: dict, y: jax.Array) -> jax.Array:
    """RMS distance between predictions ``y`` and ridge at λ = exp(log_lam), over tasks."""
    x, yy, xq = tasks["x"], tasks["y"], tasks["xq"]
    lam, d = jnp.exp(log_lam), x.shape[2]
    w = jax.vmap(lambda a, b: jnp.linalg.solve(a.T @ a + lam * jnp.eye(d), a.T @ b))(x, yy)
    return jnp.sqrt(jnp.mean((jnp.sum(w * xq, 1) - y) ** 2))


def fit_ridge_lambda(tasks: dict, y: np.ndarray) -> tuple[float, float]:
    """(λ, RMS) of the ridge predictor closest to predictions ``y``, over log λ ∈ [−8, 8] (bounded search)."""
    tasks = {k: jnp.asarray(tasks[k], jnp.float32) for k in ("x", "y", "xq")}
    y = jnp.asarray(y, jnp.float32)
    grid = np.linspace(-8, 8, 33)
    vals = [float(_ridge_rms(g, tasks, y)) for g in grid]
    i = int(np.nanargmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    sol = scipy.optimize.minimize_scalar(lambda g: float(_ridge_rms(g, tasks, y)), bounds=(lo, hi),
                                         method="bounded", options={"xatol": 1e-4})
    return float(np.exp(sol.x)), float(sol.fun)


@register_probe("icl_implied")
def icl_implied(subject: Subject) -> ImpliedReport:
    """Implied parameters (η, GD++ (η, γ), ridge λ) fitted to the learner's predictions in training."""
    fam = _family(subject)
    tasks, _, y = model_view(subject, "train")
    tasks, y = {k: jnp.asarray(v) for k, v in _first(tasks, FIT_TASKS).items()}, y[:FIT_TASKS]
    xq = tasks["xq"]
    mask = fam.feature_mask()
    # one GD step: ŷ = η u with u = x_qᵀ (mask ⊙ Xᵀy/N): least squares in closed form
    u = np.asarray(jnp.sum(mask[None, :] * jnp.einsum("tnd,tn->td", tasks["x"], tasks["y"]) / fam.context * xq, 1),
                   np.float64)
    eta = float(np.sum(u * y) / np.sum(u * u))
    eta_rms = float(np.sqrt(np.mean((eta * u - y) ** 2)))
    (eta_opt,), _ = icl_refs.gd_optimum(fam, 1, dim=fam.dim - (fam.masked is not None))
    gd_steps = gdpp = gdpp_opt = None
    k = fam.horizon
    if k > 1:
        yj = jnp.asarray(y, jnp.float32)
        p, _ = _least_squares(_gd_residual(k), np.full(k, eta / k), tasks, yj)
        gd_steps = [float(v) for v in p]
        (e_opt, g_opt), _ = icl_refs.gdpp_optimum(fam, k)
        # start from the optimum; the fit is not convex, so also from γ = 0 when that fit is poor
        fits = [_least_squares(_gdpp_residual(k), np.array([e_opt, g_opt]), tasks, yj)]
        if fits[0][1] > 0.05 * float(np.std(y)):
            fits.append(_least_squares(_gdpp_residual(k), np.array([eta, 0.0]), tasks, yj))
        (pe, pg), rms = min(fits, key=lambda f: f[1])
        gdpp, gdpp_opt = {"eta": float(pe), "gamma": float(pg), "rms": rms}, {"eta": e_opt, "gamma": g_opt}
    lam, lam_rms = fit_ridge_lambda(tasks, y)
    w_gd1 = _batched(icl_refs.gd_weights, etas=(float(eta_opt),))(tasks)
    lam_gd1, _ = fit_ridge_lambda(tasks, np.asarray(jnp.sum(w_gd1 * xq, 1)))
    return ImpliedReport(eta, eta_rms, float(eta_opt), gd_steps, gdpp, gdpp_opt, lam, lam_rms, fam.bayes_lambda,
                         lam_gd1)


# -------------------------------------------------------------------------------------------------------
# icl_fixed_point
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FixedPointReport(Report):
    damping: float
    steps: int
    distance: dict[str, dict[str, float]]  # shift -> candidate -> mean ‖X(w − w*)‖/‖X w*‖ (in-context metric)
    nearest: dict[str, str | None]         # shift -> candidate nearest the fixed point (None: it diverged)
    residual: dict[str, float]             # shift -> mean final increment / mean first increment
    converged: dict[str, bool]

    def summary(self, base: str) -> str:
        return ("fixed point nearest " + ", ".join(f"{fmt(n)} on {s}" for s, n in self.nearest.items())
                + f"; converged on {sum(self.converged.values())}/{len(self.converged)} shifts")


def learner_weights(family: ICLFamily, optimizer: Optimizer) -> Callable[[dict, jax.Array], jax.Array]:
    """``(task, key) -> ŵ``: the learner's implied weights after its horizon on one task (its whole forward
    pass; ``key`` feeds the rollout's draws, which an in-context learner does not use)."""
    def run(task, key):
        state = rollout.start(family, optimizer, key, task)
        return rollout.unroll(family, optimizer, state, key, family.horizon, keep=lambda s, r: ())[0].params["w"]
    return run


@functools.lru_cache(maxsize=64)
def fixed_point_run(family: ICLFamily, optimizer: Optimizer, damping: float = DAMPING,
                    steps: int = FIXED_POINT_STEPS) -> Callable:
    """Jitted ``(tasks, key) -> (w, first increment norm, last increment norm)``, one per (family, learner):
    iterates ``w ← w + α ŵ(x, y − Xw)``, the learner reading the context with targets ``y_i − w·x_i``. A step
    that does not shrink the increment is refused and α halved, so a step size tuned for another input scale
    cannot make the iteration diverge."""
    implied = learner_weights(family, optimizer)

    def run(t, key):
        def increment(t, w):
            return implied({**t, "y": t["y"] - t["x"] @ w}, key)

        def body(carry, _):
            w, dw, alpha = carry
            w_new = w + alpha * dw
            dw_new = increment(t, w_new)
            better = jnp.linalg.norm(dw_new) < jnp.linalg.norm(dw)
            carry = (jnp.where(better, w_new, w), jnp.where(better, dw_new, dw), jnp.where(better, alpha, alpha / 2))
            return carry, jnp.linalg.norm(carry[1])
        dw0 = increment(t, jnp.zeros_like(t["xq"]))
        (w, _, _), norms = jax.lax.scan(body, (jnp.zeros_like(t["xq"]), dw0, jnp.asarray(damping, dw0.dtype)),
                                        None, length=steps)
        return w, jnp.linalg.norm(dw0), norms[-1]

    return jax.jit(jax.vmap(run, in_axes=(0, None)))


@functools.lru_cache(maxsize=64)
def _argmin_fn(family: ICLFamily, name: str) -> Callable:
    # one program per candidate (see ``reference_weights``)
    return jax.jit(jax.vmap(lambda t: family.argmins(t)[name]))


@register_probe("icl_fixed_point")
def icl_fixed_point(subject: Subject) -> FixedPointReport:
    """The fixed point of the learner applied repeatedly to its own residuals, against each candidate's argmin."""
    family = _family(subject)
    dist, nearest, resid, conv = {}, {}, {}, {}
    run = fixed_point_run(family, subject.concrete)
    names = [n for n in subject.candidates() if n != family.base]
    for shift in family.shifts():
        tasks = {k: jnp.asarray(v) for k, v in _first(subject.trace(shift).tasks, PROBE_TASKS).items()}
        w, first, last = (np.asarray(a, np.float64) for a in run(tasks, subject.key))
        # the candidates are the training family's (the objectives a learner could have picked up there)
        argmins = {n: _argmin_fn(family, n)(tasks) for n in names}
        x = np.asarray(tasks["x"], np.float64)
        d = {}
        for name, w_star in argmins.items():
            w_star = np.asarray(w_star, np.float64)
            num = np.linalg.norm(np.einsum("tnd,td->tn", x, w - w_star), axis=1)
            den = np.maximum(np.linalg.norm(np.einsum("tnd,td->tn", x, w_star), axis=1), 1e-12)
            d[name] = float(np.mean(num / den)) if np.all(np.isfinite(num)) else float("inf")
        dist[shift] = d
        finite = {k: v for k, v in d.items() if math.isfinite(v)}
        nearest[shift] = min(finite, key=finite.get) if finite else None
        ratio = float(np.mean(last) / max(float(np.mean(first)), 1e-30))
        resid[shift], conv[shift] = ratio, bool(math.isfinite(ratio) and ratio < 1e-2)
    return FixedPointReport(DAMPING, FIXED_POINT_STEPS, dist, nearest, resid, conv)


# -------------------------------------------------------------------------------------------------------
# icl_shifts
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShiftOutcome:
    loss: float              # the model's base
    attainable: str          # the best learner of the model's class, re-optimised on this shift
    attainable_loss: float
    bayes_loss: float        # ridge at σ²/τ² (least squares when σ = 0) on this shift's draws
    zero_loss: float         # the predictor ŷ = 0
    loses: bool              # loss > LOSES × attainable_loss


@dataclasses.dataclass(frozen=True)
class ShiftsReport(Report):
    shifts: dict[str, ShiftOutcome]
    decorrelating: list[str]

    def summary(self, base: str) -> str:
        lost = [s for s, o in self.shifts.items() if o.loses]
        train = self.shifts["train"]
        return (f"query error in training {fmt(train.loss)} (best of its class {fmt(train.attainable_loss)}, "
                f"Bayes-optimal {fmt(train.bayes_loss)}, zero predictor {fmt(train.zero_loss)}); loses on "
                f"{', '.join(lost) or 'no shift'}")


@functools.lru_cache(maxsize=64)
def _attainable(family: ICLFamily, layers: int) -> dict[str, icl_refs.Reference]:
    """The base-aligned references a ``layers``-layer attention model can express, optimal on ``family``."""
    (eta1,), _ = icl_refs.gd_optimum(family, 1)
    out = {"gd1": icl_refs.Reference("gd1", "icl_ls", lambda t: icl_refs.gd_weights(t, (eta1,)), {"eta": eta1},
                                     True, "one GD step")}
    if layers > 1:
        etas, _ = icl_refs.gd_optimum(family, layers)
        (eta, gamma), _ = icl_refs.gdpp_optimum(family, layers)
        out[f"gd{layers}"] = icl_refs.Reference(f"gd{layers}", "icl_ls", lambda t: icl_refs.gd_weights(t, etas),
                                                {"eta": etas[0]}, True, f"{layers} GD steps")
        out[f"gdpp{layers}"] = icl_refs.Reference(
            f"gdpp{layers}", "icl_ls", lambda t: icl_refs.gdpp_weights(t, eta, gamma, layers),
            {"eta": eta, "gamma": gamma}, True, "GD++")
    return out


@register_probe("icl_shifts")
def icl_shifts(subject: Subject) -> ShiftsReport:
    """The base on every shift against the best learner of the model's class re-optimised there."""
    family = _family(subject)
    out = {}
    for shift in family.shifts():
        fam = family.shift(shift)
        tasks, _, y_m = model_view(subject, shift)
        xq = np.asarray(tasks["xq"], np.float64)
        losses = {n: base_loss(np.sum(np.asarray(_batched(r.weights)(tasks)) * xq, 1), tasks)
                  for n, r in _attainable(fam, family.horizon).items()}
        best = min(losses, key=losses.get)
        w_bayes = np.asarray(_batched(icl_refs.ridge_weights, lam=fam.bayes_lambda)(tasks))
        loss = base_loss(y_m, tasks)
        out[shift] = ShiftOutcome(loss, best, losses[best], base_loss(np.sum(w_bayes * xq, 1), tasks),
                                  base_loss(np.zeros_like(y_m), tasks), bool(loss > LOSES * losses[best]))
    return ShiftsReport(out, list(family.decorrelating()))


# -------------------------------------------------------------------------------------------------------
# icl_linear_probe
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LinearProbeReport(Report):
    """Held-out R² (grouped by task) per layer and target: the model's activations, the untrained network's, and
    the model's with the target shuffled across tasks; ``inputs`` is the probe on the input tokens."""

    r2: dict[str, dict[str, float]]
    untrained: dict[str, dict[str, float]]
    shuffled: dict[str, dict[str, float]]
    inputs: dict[str, float]
    represented: dict[str, list[str]]  # layer -> targets decoded (R² ≥ 0.9, beating every control by ≥ 0.2)

    def summary(self, base: str) -> str:
        return "; ".join(f"{layer}: {', '.join(names) or 'nothing'} represented"
                         for layer, names in self.represented.items()) or "no layer"


def _probe_targets(family: ICLFamily, tasks: dict) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (token: "query" or "context", values (n,) or (n, N)): the references' intermediate quantities
    after each step (GD with its optimal shared η; GD++ with its optimal (η, γ) when the model has > 1 layer)."""
    fam, k = family, family.horizon
    algos = {"gd": (icl_refs.gd_optimum(fam, k, shared=True)[0][0], 0.0)}
    if k > 1:
        algos["gdpp"] = icl_refs.gdpp_optimum(fam, k)[0]
    out = {}
    for algo, (eta, gamma) in algos.items():
        weights, residuals = _batched(icl_refs.gdpp_trace, eta=float(eta), gamma=float(gamma), steps=k)(tasks)
        for step in range(k):
            out[f"{algo}_step{step + 1}_prediction"] = ("query", np.asarray(jnp.sum(weights[step] * tasks["xq"], 1)))
            out[f"{algo}_step{step + 1}_residual"] = ("context", np.asarray(residuals[step]))
    return out


def _decode(acts: np.ndarray, target: tuple[str, np.ndarray], shuffle: bool = False, seed: int = 0) -> float:
    """R² of a ridge probe from the activations (n, N+1, D) at the target's tokens, folds grouped by task."""
    where, values = target
    n = acts.shape[0]
    if shuffle:
        values = values[np.random.default_rng(seed).permutation(n)]
    if where == "query":
        x, y, groups = acts[:, -1, :], values, np.arange(n)
    else:
        ctx = values.shape[1]
        x = acts[:, :ctx, :].reshape(n * ctx, -1)
        y, groups = values.reshape(-1), np.repeat(np.arange(n), ctx)
    return ridge_cv(x, y, groups)


def _stream(trace, n: int) -> list[np.ndarray]:
    """The residual stream of the first ``n`` tasks: the input tokens, then after every layer (the captures)."""
    tasks = _first(trace.tasks, n)
    acts = [np.asarray(jax.vmap(tokens)(tasks), np.float64)]
    return acts + [np.asarray(trace.captures[STREAM][:n, step], np.float64) for step in range(trace.steps)]


@register_probe("icl_linear_probe")
def icl_linear_probe(subject: Subject) -> LinearProbeReport:
    """Linear probes on the residual stream for the references' intermediate quantities, with controls."""
    family = _family(subject)
    trace = subject.trace("train", captures=(STREAM,))
    if STREAM not in trace.captures:
        raise ValueError(f"the linear probe reads the learner's residual stream (capture {STREAM!r}); "
                         "this learner records none")
    tasks = _first(trace.tasks, PROBE_TASKS)
    targets = _probe_targets(family, {k: jnp.asarray(v) for k, v in tasks.items()})
    acts = _stream(trace, PROBE_TASKS)
    base_acts = None
    if subject.untrained is not None:
        base_acts = _stream(subject.trace("train", captures=(STREAM,), optimizer=subject.untrained,
                                          name="untrained"), PROBE_TASKS)
    r2, untrained, shuffled, represented = {}, {}, {}, {}
    inputs = {name: _decode(acts[0], t) for name, t in targets.items()}
    for layer in range(1, len(acts)):
        key = f"layer{layer}"
        r2[key] = {name: _decode(acts[layer], t) for name, t in targets.items()}
        shuffled[key] = {name: _decode(acts[layer], t, shuffle=True) for name, t in targets.items()}
        untrained[key] = ({name: _decode(base_acts[layer], t) for name, t in targets.items()}
                          if base_acts is not None else {})
        represented[key] = [n for n, v in r2[key].items()
                            if v >= ICL_REPRESENTED_R2 and all(v - c.get(n, -np.inf) >= ICL_REPRESENTED_GAP for c in
                                                (untrained[key], shuffled[key], inputs) if n in c)]
    return LinearProbeReport(r2, untrained, shuffled, inputs, represented)


# -------------------------------------------------------------------------------------------------------
# The in-context class rule
# -------------------------------------------------------------------------------------------------------
@register_rule("incontext")
def in_context_rule(reports: dict[str, Report], family: ICLFamily) -> tuple[str, str | None, float, str] | None:
    """(label, pursued, confidence, evidence): the competence gate; a proxy when on a decorrelating shift the
    model stays closest to a proxy's learner and loses to the best learner of its class; otherwise the inner
    objective of the closest reference, robust when it matches the Bayes-optimal predictor on every shift.

    For an in-context learner the base (the query error) is never observable: it can only pursue an objective
    it builds from the context, and which of those serve the base is known in closed form (the references).
    The general probes' findings are reported beside it; this rule decides. ``None`` (the general procedure
    goes on) when either report is missing or failed."""
    al, sh = reports.get("icl_alignment"), reports.get("icl_shifts")
    if not isinstance(al, AlignmentReport) or not isinstance(sh, ShiftsReport):
        return None
    train = sh.shifts["train"]
    if not train.loss < COMPETENT * train.zero_loss:
        return ("not_optimizing", None, 1.0 - train.loss / max(train.zero_loss, 1e-30),
                f"its query error in training ({train.loss:.3g}) is not below {COMPETENT}× the zero predictor's "
                f"({train.zero_loss:.3g})")
    for shift in sh.decorrelating:
        closest = al.shifts[shift].closest
        quantity = al.quantity[closest]
        if quantity in PROXIES and sh.shifts[shift].loses:
            m = al.shifts[shift].metrics
            aligned = min((n for n in m if al.quantity[n] not in PROXIES), key=lambda n: m[n]["preds_diff"])
            conf = 1.0 - m[closest]["preds_diff"] / max(m[aligned]["preds_diff"], 1e-30)
            return ("proxy_general", quantity, float(np.clip(conf, 0, 1)),
                    f"on {shift} it still follows {closest} ({al.references[closest]}; prediction RMS difference "
                    f"{m[closest]['preds_diff']:.3g} vs {m[aligned]['preds_diff']:.3g} for the nearest base-aligned "
                    f"learner {aligned}) and its query error {sh.shifts[shift].loss:.3g} exceeds the "
                    f"{sh.shifts[shift].attainable_loss:.3g} of {sh.shifts[shift].attainable} re-optimised there")
    where = sh.decorrelating[0] if sh.decorrelating else "train"
    closest = al.shifts[where].closest
    cos = al.shifts[where].metrics[closest]["model_cos"]
    if cos < MATCHED_COS:
        return ("unidentified", None, float(cos),
                f"no reference matches it (best cosine {cos:.3f}, {closest})")
    quantity = al.quantity[closest]
    robust = (train.loss <= (1 + ROBUST_EXCESS) * train.bayes_loss + 0.002 and all(
        a.metrics[a.closest]["model_cos"] >= ROBUST_COS and al.quantity[a.closest] not in PROXIES
        for a in al.shifts.values()))
    if robust:
        return ("robust", quantity, float(cos),
                f"it matches {closest} ({al.references[closest]}) and the Bayes-optimal query error "
                f"{train.bayes_loss:.3g} in training ({train.loss:.3g}), and keeps matching a base-aligned learner "
                f"on every shift")
    return ("approximate", quantity, float(cos),
            f"it implements {closest} ({al.references[closest]}; cosine {cos:.4f}): it pursues {quantity}, the "
            f"base's in-context form, up to its capacity (query error {train.loss:.3g} vs Bayes-optimal "
            f"{train.bayes_loss:.3g})")
