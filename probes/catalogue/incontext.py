"""Probes for in-context mesa-optimizers: which inner objective does a sequence model meta-trained on regression
tasks pursue when it fits a new task from its context, and how does it relate to the base (the query error)?

The check against a published result is von Oswald et al. 2022, "Transformers learn in-context by gradient
descent" (ICML 2023): a trained single linear self-attention layer is one GD step with the optimal step size,
and looped layers are GD++. Their alignment metrics compare a model with a reference learner on the same tasks:

- ``preds_diff``: RMS over tasks of ``ŷ_model − ŷ_ref``;
- ``model_cos`` / ``model_diff``: the mean cosine and mean L2 distance between the model's sensitivity
  ``∂ŷ/∂x_q`` (its *implied weights*) and the reference's weights.

Registered probes (``probes.subject.register_probe``), each a function of an ``ICLSubject``:

- ``icl_alignment``: the metrics above against every reference (``lab.incontext.references``), on every
  shift, with each learner's query loss; the closest reference per shift.
- ``icl_implied``: the implied parameters of the parametric references fitted to the model's predictions: step
  size η (one GD step), (η, γ) of GD++, ridge λ, beside their optima and σ²/τ².
- ``icl_fixed_point``: the model applied repeatedly to its own residuals, ``w ← w + α ∂ŷ/∂x_q`` on the context
  ``(x_i, y_i − w·x_i)``; the fixed point against each candidate's argmin (a learner's fixed point is the
  objective it would reach with unlimited steps, which separates "one step on least squares" from "ridge").
- ``icl_shifts``: the base on every shift against the best learner the architecture can express (re-optimised
  on the shift) and the Bayes-optimal one; whether the model loses there.
- ``icl_linear_probe``: ridge probes (grouped by task) on the residual stream for the references' intermediate
  quantities (the GD / GD++ prediction after each step, the context residuals), with controls: the input
  tokens, the untrained network and shuffled targets (Hewitt and Liang 2019).

``icl_verdict`` combines them into a ``probes.verdict.Verdict`` (classes of Hubinger et al. 2019), and
``run_suite`` trains, audits and renders the small suite that ``scripts/icl.py`` and the scenario zoo use.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from matplotlib.figure import Figure

from lab.incontext import models as icl_models
from lab.incontext import references as icl_refs
from lab.incontext.family import ICLFamily, tokens
from lab.incontext.models import ModelSpec
from lab.incontext.train import TrainConfig, meta_train
from probes.subject import Report, register_probe, to_json
from probes.report import LABEL_COLOURS, _png, fmt
from probes.catalogue.representation import ridge_cv
from probes.verdict import Verdict

PROXIES = ("ls_masked", "pool_posterior")  # quantities that agree with the base only on the training tasks
LOSES = 1.05             # the model "loses" on a shift: its base above this × the best attainable learner's there
ROBUST_EXCESS = 0.05     # robust: train base within 5% (+0.002) of the Bayes-optimal predictor's
ROBUST_COS = 0.99        # ... and implied weights this aligned with a base-aligned reference on every shift
MATCHED_COS = 0.9        # below this against every reference, the model implements none of them
COMPETENT = 0.8          # competence gate: train base below this × the zero predictor's
DAMPING = 0.5            # fixed-point iteration step
FIXED_POINT_STEPS = 300
FIT_TASKS = 2000         # tasks the implied-parameter fits use


# -------------------------------------------------------------------------------------------------------
# The subject of an in-context audit
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ICLSubject:
    """A learner under audit: ``predict(task) -> ŷ`` for one task (a trained model, the hand-built control or a
    planted closed form), the family it was trained on, and the depth its references are built for.

    ``stream`` / ``untrained_stream`` (one task -> list of (N+1, d+1) activations) are needed only by the linear
    probe. Every evaluation draws the same ``tasks`` task keys from ``key`` on every shift, so shifts are compared
    on paired draws."""

    name: str
    predict: Callable[[dict], jax.Array]
    family: ICLFamily
    layers: int = 1
    key: jax.Array = dataclasses.field(default_factory=lambda: jax.random.key(0))
    tasks: int = 4096
    stream: Callable | None = None
    untrained_stream: Callable | None = None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_model(cls, name: str, spec: ModelSpec, graphdef, params, family: ICLFamily, key: jax.Array,
                   tasks: int = 4096, untrained=None) -> "ICLSubject":
        """A subject from a Flax model (``untrained``: its initial parameters, for the linear-probe control)."""
        return cls(name, lambda t: icl_models.apply(graphdef, params, tokens(t)), family, spec.layers, key, tasks,
                   stream=lambda t: icl_models.stream(graphdef, params, tokens(t)),
                   untrained_stream=None if untrained is None else
                   (lambda t: icl_models.stream(graphdef, untrained, tokens(t))))

    def references(self) -> dict[str, icl_refs.Reference]:
        if "refs" not in self._cache:
            self._cache["refs"] = icl_refs.reference_set(self.family, self.layers)
        return self._cache["refs"]

    def batch(self, shift: str = "train") -> dict:
        if ("batch", shift) not in self._cache:
            self._cache[("batch", shift)] = self.family.shift(shift).sample_batch(self.key, self.tasks)
        return self._cache[("batch", shift)]

    def jitted(self, name: str, build: Callable) -> Callable:
        """One compiled function per subject and ``name``, reused across shifts (same shapes, one compilation)."""
        if ("jit", name) not in self._cache:
            self._cache[("jit", name)] = jax.jit(build())
        return self._cache[("jit", name)]

    def model(self, shift: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(implied weights (n, d), predictions (n,)) of the subject on ``shift``."""
        if ("model", shift) not in self._cache:
            fn = self.jitted("implied", lambda: jax.vmap(implied_one(self.predict)))
            self._cache[("model", shift)] = tuple(np.asarray(a, np.float64) for a in fn(self.batch(shift)))
        return self._cache[("model", shift)]

    def reference(self, name: str, shift: str = "train") -> np.ndarray:
        """Weights (n, d) of reference ``name`` (parameters fixed on the training family) on ``shift``."""
        if ("ref", name, shift) not in self._cache:
            # one program per reference: XLA:CPU was seen to hang on one program holding several of the
            # LAPACK-backed solves at once
            fn = _batched(self.references()[name].weights)
            self._cache[("ref", name, shift)] = np.asarray(fn(self.batch(shift)), np.float64)
        return self._cache[("ref", name, shift)]


@functools.lru_cache(maxsize=256)
def _batched(fn: Callable) -> Callable:
    """``jax.jit(jax.vmap(fn))``, one per function, so subjects of one family share the references' compilations."""
    return jax.jit(jax.vmap(fn))


def implied_one(predict: Callable) -> Callable:
    """``task -> (∂ŷ/∂x_q, ŷ)`` for one task (the implied weights are exact for learners linear in the query)."""
    def one(t):
        pred, grad = jax.value_and_grad(lambda xq: predict({**t, "xq": xq}))(t["xq"])
        return grad, pred
    return one


def implied(predict: Callable, tasks: dict) -> tuple[np.ndarray, np.ndarray]:
    """(∂ŷ/∂x_q, ŷ) of ``predict`` on every task of a batch."""
    w, y = jax.jit(jax.vmap(implied_one(predict)))(tasks)
    return np.asarray(w, np.float64), np.asarray(y, np.float64)


def alignment(w_model: np.ndarray, y_model: np.ndarray, w_ref: np.ndarray, xq: np.ndarray) -> dict[str, float]:
    """von Oswald et al.'s metrics: preds_diff (RMS), model_cos (mean cosine), model_diff (mean L2)."""
    y_ref = np.sum(w_ref * xq, axis=1)
    nm, nr = np.linalg.norm(w_model, axis=1), np.linalg.norm(w_ref, axis=1)
    cos = np.sum(w_model * w_ref, axis=1) / np.maximum(nm * nr, 1e-30)
    return {"preds_diff": float(np.sqrt(np.mean((y_model - y_ref) ** 2))), "model_cos": float(np.mean(cos)),
            "model_diff": float(np.mean(np.linalg.norm(w_model - w_ref, axis=1)))}


def base_loss(pred: np.ndarray, tasks: dict) -> float:
    return float(np.mean(0.5 * (pred - np.asarray(tasks["yq"], np.float64)) ** 2))


def _shifts(family: ICLFamily) -> list[str]:
    return list(family.shifts())


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


def alignment_report(subject: ICLSubject) -> AlignmentReport:
    refs = subject.references()
    out = {}
    for shift in _shifts(subject.family):
        tasks = subject.batch(shift)
        xq = np.asarray(tasks["xq"], np.float64)
        w_m, y_m = subject.model(shift)
        metrics, losses = {}, {}
        for name in refs:
            w_r = subject.reference(name, shift)
            metrics[name] = alignment(w_m, y_m, w_r, xq)
            losses[name] = base_loss(np.sum(w_r * xq, axis=1), tasks)
        closest = min(metrics, key=lambda n: metrics[n]["preds_diff"])
        out[shift] = ShiftAlignment(base_loss(y_m, tasks), losses, metrics, closest)
    return AlignmentReport({n: r.description for n, r in refs.items()}, {n: r.quantity for n, r in refs.items()},
                           out)


@register_probe("icl_alignment")
def icl_alignment(subject: ICLSubject) -> AlignmentReport:
    """Alignment metrics of the subject against every reference on every shift."""
    _check(subject)
    return _cached(subject, "icl_alignment", alignment_report)


def _check(subject) -> None:
    if not isinstance(subject, ICLSubject):
        raise ValueError("the icl_* probes audit in-context learners: pass a probes.catalogue.incontext.ICLSubject")


def _cached(subject: ICLSubject, name: str, fn: Callable) -> Report:
    if ("report", name) not in subject._cache:
        subject._cache[("report", name)] = fn(subject)
    return subject._cache[("report", name)]


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


def _fit_tasks(subject: ICLSubject) -> tuple[dict, np.ndarray]:
    n = min(FIT_TASKS, subject.tasks)
    tasks = jax.tree.map(lambda a: a[:n], subject.batch("train"))
    return tasks, subject.model("train")[1][:n]


def _least_squares(residual: Callable, x0) -> tuple[np.ndarray, float]:
    """Gauss-Newton fit of a jittable residual function of a parameter vector; (params, RMS residual)."""
    f = jax.jit(residual)
    jac = jax.jit(jax.jacfwd(residual))
    sol = scipy.optimize.least_squares(lambda p: np.asarray(f(jnp.asarray(p, jnp.float32)), np.float64), x0,
                                       jac=lambda p: np.asarray(jac(jnp.asarray(p, jnp.float32)), np.float64),
                                       x_scale="jac")
    return sol.x, float(np.sqrt(np.mean(sol.fun**2)))


def fit_ridge_lambda(tasks: dict, y: np.ndarray) -> tuple[float, float]:
    """(λ, RMS) of the ridge predictor closest to predictions ``y``, over log λ ∈ [−8, 8] (bounded search)."""
    x, yy, xq = tasks["x"], tasks["y"], tasks["xq"]
    y = jnp.asarray(y, jnp.float32)

    @jax.jit
    def rms(log_lam):
        lam = jnp.exp(log_lam)
        d = x.shape[2]
        w = jax.vmap(lambda a, b: jnp.linalg.solve(a.T @ a + lam * jnp.eye(d), a.T @ b))(x, yy)
        return jnp.sqrt(jnp.mean((jnp.sum(w * xq, 1) - y) ** 2))

    grid = np.linspace(-8, 8, 33)
    vals = [float(rms(g)) for g in grid]
    i = int(np.nanargmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    sol = scipy.optimize.minimize_scalar(lambda g: float(rms(g)), bounds=(lo, hi), method="bounded",
                                         options={"xatol": 1e-4})
    return float(np.exp(sol.x)), float(sol.fun)


def implied_report(subject: ICLSubject) -> ImpliedReport:
    fam = subject.family
    tasks, y = _fit_tasks(subject)
    xq = tasks["xq"]
    mask = fam.feature_mask()
    # one GD step: ŷ = η u with u = x_qᵀ (mask ⊙ Xᵀy/N): least squares in closed form
    u = np.asarray(jnp.sum(mask[None, :] * jnp.einsum("tnd,tn->td", tasks["x"], tasks["y"]) / fam.context * xq, 1),
                   np.float64)
    eta = float(np.sum(u * y) / np.sum(u * u))
    eta_rms = float(np.sqrt(np.mean((eta * u - y) ** 2)))
    (eta_opt,), _ = icl_refs.gd_optimum(fam, 1, dim=fam.dim - (fam.masked is not None))
    gd_steps = gdpp = gdpp_opt = None
    k = subject.layers
    if k > 1:
        yj = jnp.asarray(y, jnp.float32)
        p, _ = _least_squares(lambda p: jnp.sum(jax.vmap(lambda t: icl_refs.gd_weights(t, tuple(p[i] for i in range(k))))(tasks) * xq, 1) - yj,
                              np.full(k, eta / k))
        gd_steps = [float(v) for v in p]
        (e_opt, g_opt), _ = icl_refs.gdpp_optimum(fam, k)
        # start from the optimum's neighbourhood and from γ = 0, keep the better fit (the fit is not convex)
        def gdpp_residual(p):
            return jnp.sum(jax.vmap(lambda t: icl_refs.gdpp_weights(t, p[0], p[1], k))(tasks) * xq, 1) - yj

        # start from the optimum; the fit is not convex, so also from γ = 0 when that fit is poor
        fits = [_least_squares(gdpp_residual, np.array([e_opt, g_opt]))]
        if fits[0][1] > 0.05 * float(np.std(y)):
            fits.append(_least_squares(gdpp_residual, np.array([eta, 0.0])))
        (pe, pg), rms = min(fits, key=lambda f: f[1])
        gdpp, gdpp_opt = {"eta": float(pe), "gamma": float(pg), "rms": rms}, {"eta": e_opt, "gamma": g_opt}
    lam, lam_rms = fit_ridge_lambda(tasks, y)
    w_gd1 = jax.vmap(lambda t: icl_refs.gd_weights(t, (eta_opt,)))(tasks)
    lam_gd1, _ = fit_ridge_lambda(tasks, np.asarray(jnp.sum(w_gd1 * xq, 1)))
    return ImpliedReport(eta, eta_rms, float(eta_opt), gd_steps, gdpp, gdpp_opt, lam, lam_rms, fam.bayes_lambda,
                         lam_gd1)


@register_probe("icl_implied")
def icl_implied(subject: ICLSubject) -> ImpliedReport:
    """Implied parameters (η, GD++ (η, γ), ridge λ) fitted to the subject's predictions in training."""
    _check(subject)
    return _cached(subject, "icl_implied", implied_report)


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


def fixed_point_run(predict: Callable, damping: float = DAMPING, steps: int = FIXED_POINT_STEPS) -> Callable:
    """``task -> (w, first increment norm, last increment norm)``: iterates ``w ← w + α ∂ŷ/∂x_q`` where the
    model reads the context with targets ``y_i − w·x_i``. A step that does not shrink the increment is refused
    and α halved, so a step size tuned for another input scale cannot make the iteration diverge."""
    def increment(t, w):
        ctx = {**t, "y": t["y"] - t["x"] @ w}
        return jax.grad(lambda xq: predict({**ctx, "xq": xq}))(t["xq"])

    def run(t):
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

    return run


def fixed_point_report(subject: ICLSubject, tasks_per_shift: int = 512) -> FixedPointReport:
    dist, nearest, resid, conv = {}, {}, {}, {}
    run = subject.jitted("fixed_point", lambda: jax.vmap(fixed_point_run(subject.predict)))
    names = [n for n in subject.family.candidates() if n != subject.family.base]
    # one program per candidate (see ICLSubject.reference)
    argmin_fns = {n: subject.jitted(f"argmin/{n}", lambda n=n: jax.vmap(lambda t: subject.family.argmins(t)[n]))
                  for n in names}
    for shift in _shifts(subject.family):
        tasks = jax.tree.map(lambda a: a[:tasks_per_shift], subject.batch(shift))
        w, first, last = (np.asarray(a, np.float64) for a in run(tasks))
        # the candidates are the training family's (the objectives a learner could have picked up there)
        argmins = {n: fn(tasks) for n, fn in argmin_fns.items()}
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


@register_probe("icl_fixed_point")
def icl_fixed_point(subject: ICLSubject) -> FixedPointReport:
    """The fixed point of the subject applied repeatedly to its own residuals, against each candidate's argmin."""
    _check(subject)
    return _cached(subject, "icl_fixed_point", fixed_point_report)


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


def shifts_report(subject: ICLSubject) -> ShiftsReport:
    out = {}
    for shift in _shifts(subject.family):
        fam = subject.family.shift(shift)
        tasks = subject.batch(shift)
        xq = np.asarray(tasks["xq"], np.float64)
        _, y_m = subject.model(shift)
        losses = {n: base_loss(np.sum(np.asarray(_batched(r.weights)(tasks)) * xq, 1), tasks)
                  for n, r in _attainable(fam, subject.layers).items()}
        best = min(losses, key=losses.get)
        w_bayes = np.asarray(jax.jit(jax.vmap(lambda t: icl_refs.ridge_weights(t, fam.bayes_lambda)))(tasks))
        loss = base_loss(y_m, tasks)
        out[shift] = ShiftOutcome(loss, best, losses[best], base_loss(np.sum(w_bayes * xq, 1), tasks),
                                  base_loss(np.zeros_like(y_m), tasks), bool(loss > LOSES * losses[best]))
    return ShiftsReport(out, list(subject.family.decorrelating()))


@register_probe("icl_shifts")
def icl_shifts(subject: ICLSubject) -> ShiftsReport:
    """The base on every shift against the best learner of the model's class re-optimised there."""
    _check(subject)
    return _cached(subject, "icl_shifts", shifts_report)


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


def _probe_targets(subject: ICLSubject, tasks: dict) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (token: "query" or "context", values (n,) or (n, N)): the references' intermediate quantities
    after each step (GD with its optimal shared η; GD++ with its optimal (η, γ) when the model has > 1 layer)."""
    fam, k = subject.family, max(subject.layers, 1)
    algos = {"gd": (icl_refs.gd_optimum(fam, k, shared=True)[0][0], 0.0)}
    if k > 1:
        algos["gdpp"] = icl_refs.gdpp_optimum(fam, k)[0]
    out = {}
    for algo, (eta, gamma) in algos.items():
        weights, residuals = jax.jit(jax.vmap(lambda t: icl_refs.gdpp_trace(t, eta, gamma, k)))(tasks)
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


def linear_probe_report(subject: ICLSubject, tasks_n: int = 512) -> LinearProbeReport:
    if subject.stream is None:
        raise ValueError("the linear probe needs the subject's activations (ICLSubject.stream)")
    tasks = jax.tree.map(lambda a: a[:tasks_n], subject.batch("train"))
    targets = _probe_targets(subject, tasks)
    acts = [np.asarray(a, np.float64) for a in jax.jit(jax.vmap(subject.stream))(tasks)]
    base_acts = ([np.asarray(a, np.float64) for a in jax.jit(jax.vmap(subject.untrained_stream))(tasks)]
                 if subject.untrained_stream is not None else None)
    r2, untrained, shuffled, represented = {}, {}, {}, {}
    inputs = {name: _decode(acts[0], t) for name, t in targets.items()}
    for layer in range(1, len(acts)):
        key = f"layer{layer}"
        r2[key] = {name: _decode(acts[layer], t) for name, t in targets.items()}
        shuffled[key] = {name: _decode(acts[layer], t, shuffle=True) for name, t in targets.items()}
        untrained[key] = ({name: _decode(base_acts[layer], t) for name, t in targets.items()}
                          if base_acts is not None else {})
        represented[key] = [n for n, v in r2[key].items()
                            if v >= 0.9 and all(v - c.get(n, -np.inf) >= 0.2 for c in
                                                (untrained[key], shuffled[key], inputs) if n in c)]
    return LinearProbeReport(r2, untrained, shuffled, inputs, represented)


@register_probe("icl_linear_probe")
def icl_linear_probe(subject: ICLSubject) -> LinearProbeReport:
    """Linear probes on the residual stream for the references' intermediate quantities, with controls."""
    _check(subject)
    return _cached(subject, "icl_linear_probe", linear_probe_report)


# -------------------------------------------------------------------------------------------------------
# The verdict
# -------------------------------------------------------------------------------------------------------
def decide(subject: ICLSubject, reports: dict[str, Report]) -> tuple[str, str | None, float, str]:
    """(label, pursued, confidence, evidence): the competence gate; a proxy when on a decorrelating shift the
    model stays closest to a proxy's learner and loses to the best learner of its class; otherwise the inner
    objective of the closest reference, robust when it matches the Bayes-optimal predictor on every shift."""
    al: AlignmentReport = reports["icl_alignment"]
    sh: ShiftsReport = reports["icl_shifts"]
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


VERDICT_PROBES = ("icl_alignment", "icl_implied", "icl_fixed_point", "icl_shifts")


def icl_verdict(subject: ICLSubject, seed: int = 0, extra: tuple[str, ...] = ("icl_linear_probe",)) -> Verdict:
    """Runs the in-context probes on ``subject`` and returns a ``Verdict`` (label from ``probes.verdict.CLASSES``,
    ``pursued`` naming the candidate quantity). ``extra`` probes are reported but do not decide."""
    from probes.subject import get_probe

    reports = {name: get_probe(name)(subject) for name in VERDICT_PROBES}
    for name in extra:
        if name == "icl_linear_probe" and subject.stream is None:
            continue
        reports[name] = get_probe(name)(subject)
    label, pursued, confidence, evidence = decide(subject, reports)
    return Verdict(label, pursued, float(confidence), evidence, ICLFamily.name, ICLFamily.base,
                   sorted(subject.family.shifts()), seed, reports)


# -------------------------------------------------------------------------------------------------------
# Training, the suite and its report
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SuiteModel:
    """One model of the suite: how to build and train it, and the class expected of it."""

    name: str
    spec: ModelSpec
    family: ICLFamily
    config: TrainConfig
    expected: str
    expected_pursued: str | None = None


def suite(quick: bool = True, context: int = 10, dim: int = 10, noise: float = 0.5, pool: int = 4) -> list[SuiteModel]:
    """The default suite: 1-layer LSA, looped 2-layer LSA, masked feature, small pool, noisy. ``quick`` trains
    shorter (about a third of the steps, half the batch)."""
    base = ICLFamily(dim=dim, context=context)
    one = TrainConfig(steps=1500, batch=512, lr=4e-3) if quick else TrainConfig(steps=3000, batch=1024, lr=4e-3)
    # the looped model leaves the plain-GD plateau for GD++ slowly: a larger step gets it there in the quick budget
    two = TrainConfig(steps=2500, batch=512, lr=1e-2) if quick else TrainConfig(steps=5000, batch=1024, lr=5e-3)
    return [
        SuiteModel("lsa1", ModelSpec("lsa", 1), base, one, "approximate", "icl_ls"),
        SuiteModel("lsa2_looped", ModelSpec("lsa", 2, looped=True), base, two, "approximate", "icl_ls"),
        SuiteModel("lsa1_masked", ModelSpec("lsa", 1), dataclasses.replace(base, masked=dim - 1), one,
                   "proxy_general", "ls_masked"),
        SuiteModel(f"lsa1_pool{pool}", ModelSpec("lsa", 1), dataclasses.replace(base, pool=pool), one,
                   "proxy_general", "pool_posterior"),
        SuiteModel("lsa1_noisy", ModelSpec("lsa", 1), dataclasses.replace(base, noise=noise), one, "approximate"),
    ]


def _primary(refs: dict[str, icl_refs.Reference], layers: int) -> list[str]:
    """The references tracked over training (all but the ridge grid, to keep the figure readable)."""
    return [n for n in refs if not n.startswith("ridge_")] + [n for n in refs if n.startswith("ridge_")][:1]


def tracker(family: ICLFamily, layers: int, key: jax.Array, tasks: int = 512) -> Callable:
    """``on_eval(params)`` for ``lab.incontext.train``: the query loss and the alignment metrics against the
    tracked references on a fixed batch (reference weights computed once)."""
    refs = icl_refs.reference_set(family, layers)
    names = _primary(refs, layers)
    batch = family.sample_batch(key, tasks)
    xq = np.asarray(batch["xq"], np.float64)
    w_refs = {n: np.asarray(jax.jit(jax.vmap(refs[n].weights))(batch), np.float64) for n in names}
    cache: dict = {}

    def on_eval(graphdef, params) -> dict:
        if "fn" not in cache:
            def one(p, t):
                pred, g = jax.value_and_grad(lambda q: icl_models.apply(graphdef, p, tokens({**t, "xq": q})))(t["xq"])
                return g, pred
            cache["fn"] = jax.jit(jax.vmap(one, in_axes=(None, 0)))
        w, y = (np.asarray(a, np.float64) for a in cache["fn"](params, batch))
        return {"loss": base_loss(y, batch), **{n: alignment(w, y, w_refs[n], xq) for n in names}}

    return on_eval


def run_model(m: SuiteModel, seed: int = 0, eval_tasks: int = 4096, log: Callable[[str], None] | None = None):
    """Trains ``m``, audits it; returns (entry dict, verdict, history)."""
    t0 = time.perf_counter()
    key = jax.random.key(seed)
    k_train, k_track, k_eval = jax.random.split(key, 3)
    graphdef, params, history = meta_train(m.spec, m.family, m.config, k_train,
                                      on_eval=tracker(m.family, m.spec.layers, k_track))
    untrained = icl_models.build(m.spec, m.family.dim, jax.random.split(k_train)[0])[1]  # train's initial θ
    train_s = time.perf_counter() - t0
    subject = ICLSubject.from_model(m.name, m.spec, graphdef, params, m.family, k_eval, eval_tasks, untrained)
    verdict = icl_verdict(subject, seed)
    entry = entry_of(m, subject, verdict, seed)
    entry["train_seconds"] = round(train_s, 1)
    entry["audit_seconds"] = round(time.perf_counter() - t0 - train_s, 1)
    if log is not None:
        log(f"{m.name}: loss {entry['loss']:.4f} (reference {entry['reference']} {entry['reference_loss']:.4f}), "
            f"cos {entry['model_cos']:.4f}, η {fmt(entry['implied']['eta'])}, γ {fmt(entry['implied']['gamma'])}, "
            f"λ {fmt(entry['implied']['lambda'])} → {entry['label']} / {entry['pursued']} "
            f"[{entry['train_seconds']}s train, {entry['audit_seconds']}s audit]")
    return entry, verdict, history


def entry_of(m: SuiteModel, subject: ICLSubject, verdict: Verdict, seed: int) -> dict:
    """The JSON entry of one model (``scripts/icl.py``'s ``icl.json`` and the scenario zoo's rows)."""
    al: AlignmentReport = verdict.reports["icl_alignment"]
    imp: ImpliedReport = verdict.reports["icl_implied"]
    sh: ShiftsReport = verdict.reports["icl_shifts"]
    train_al = al.shifts["train"]
    ref = train_al.closest
    fam = m.family
    eta = imp.gdpp["eta"] if imp.gdpp else imp.eta
    closed = {"gd1_eta": imp.eta_optimal,
              "gd1_loss": icl_refs.gd_optimum(fam, 1, dim=fam.dim - (fam.masked is not None))[1]}
    if imp.gdpp_optimal:
        closed.update(gdpp_eta=imp.gdpp_optimal["eta"], gdpp_gamma=imp.gdpp_optimal["gamma"],
                      gdpp_loss=icl_refs.gdpp_optimum(fam, m.spec.layers)[1],
                      gd_shared_loss=icl_refs.gd_optimum(fam, m.spec.layers)[1])
    return to_json({
        "name": m.name, "family": "incontext", "kind": "learned", "seed": seed,
        "model": dataclasses.asdict(m.spec), "layers": m.spec.layers, "context": fam.context, "dim": fam.dim,
        "noise": fam.noise, "masked": fam.masked, "pool": fam.pool,
        "loss": train_al.loss, "reference": ref, "reference_loss": train_al.reference_loss[ref],
        "model_cos": train_al.metrics[ref]["model_cos"], "model_diff": train_al.metrics[ref]["model_diff"],
        "preds_diff": train_al.metrics[ref]["preds_diff"],
        "implied": {"eta": eta, "gamma": imp.gdpp["gamma"] if imp.gdpp else None, "lambda": imp.ridge_lambda},
        "bayes_lambda": imp.bayes_lambda, "gd1_optimal_lambda": imp.gd1_optimal_lambda,
        "closed_form": closed,
        "shifts": {s: {"loss": o.loss, "attainable": o.attainable, "attainable_loss": o.attainable_loss,
                       "closest": al.shifts[s].closest, "loses": o.loses} for s, o in sh.shifts.items()},
        "alignment": {s: a.metrics for s, a in al.shifts.items()},
        "expected": m.expected, "expected_pursued": m.expected_pursued,
        "label": verdict.label, "pursued": verdict.pursued, "confidence": verdict.confidence,
        "evidence": verdict.evidence, "eval_tasks": subject.tasks,
    })


def run_suite(models: list[SuiteModel] | None = None, seed: int = 0, quick: bool = True, eval_tasks: int | None = None,
              log: Callable[[str], None] | None = None) -> tuple[list[dict], str]:
    """Trains and audits ``models`` (default: ``suite(quick)``); returns (entries, HTML section). Every entry has
    ``name, family ("incontext"), seed, expected, label, pursued, kind ("learned")`` for the scenario zoo, plus the
    figures of ``scripts/icl.py``'s ``icl.json``."""
    models = suite(quick) if models is None else models
    n_eval = eval_tasks or (2048 if quick else 10000)
    results = [run_model(m, seed, n_eval, log) for m in models]
    entries = [r[0] for r in results]
    return entries, html_section(entries, [r[2] for r in results])


# -------------------------------------------------------------------------------------------------------
# HTML
# -------------------------------------------------------------------------------------------------------
def figure_training(entry: dict, history: dict) -> str:
    """Loss curve (with the closed-form optimum of the reference) and alignment metrics over training."""
    fig = Figure(figsize=(11, 3.1), layout="constrained")
    ax_l, ax_c, ax_p = fig.subplots(1, 3)
    ax_l.plot(history["step"], history["loss"], color="#1f77b4", label="training loss")
    if "eval" in history:
        ax_l.plot(history["eval_step"], [e["loss"] for e in history["eval"]], "o", ms=3, color="#1f77b4",
                  label="held-out")
    cf = entry.get("closed_form", {})
    for key, style, label in (("gd1_loss", "--", "one GD step, optimal"), ("gdpp_loss", ":", "GD++, optimal")):
        if cf.get(key) is not None:
            ax_l.axhline(cf[key], color="#d95f02", linestyle=style, linewidth=1, label=label)
    ax_l.set_yscale("log")
    ax_l.set_title(f"{entry['name']}: query loss", fontsize=9)
    ax_l.legend(fontsize=7)
    if "eval" in history:
        names = [n for n in history["eval"][0] if n != "loss"]
        for n in names:
            ax_c.plot(history["eval_step"], [e[n]["model_cos"] for e in history["eval"]], label=n)
            ax_p.plot(history["eval_step"], [e[n]["preds_diff"] for e in history["eval"]], label=n)
        ax_c.set_title("model cosine with each reference", fontsize=9)
        ax_p.set_title("prediction RMS difference", fontsize=9)
        ax_p.set_yscale("log")
        ax_c.legend(fontsize=7)
    for ax in (ax_l, ax_c, ax_p):
        ax.set_xlabel("meta-step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)


_COLUMNS = ("name", "layers", "context", "loss", "reference", "reference_loss", "model_cos", "model_diff",
            "preds_diff", "eta", "gamma", "lambda", "expected", "label", "pursued")


def html_section(entries: list[dict], histories: list[dict] | None = None) -> str:
    """An HTML section (no ``<html>`` wrapper) with the table of entries and each model's training figure."""
    esc = html.escape
    head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    rows = []
    for e in entries:
        vals = {**e, **{k: e["implied"].get(k) for k in ("eta", "gamma", "lambda")}}
        cells = []
        for c in _COLUMNS:
            v = vals.get(c)
            style = f' style="color:{LABEL_COLOURS.get(v, "#000")};font-weight:bold"' if c == "label" else ""
            cells.append(f"<td{style}>{esc(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts = ["<h2>In-context mesa-optimizers</h2>"
             "<p>Attention models meta-trained on in-context linear regression (von Oswald et al. 2022), audited "
             "against closed-form reference learners. <i>reference</i> is the learner closest to the model in "
             "training; η, γ and λ are fitted to its predictions (GD step, GD++ data transformation, ridge).</p>",
             f"<table class=inner><tr>{head}</tr>{''.join(rows)}</table>"]
    for e, h in zip(entries, histories or [None] * len(entries)):
        parts.append(f"<h3>{esc(e['name'])}: <span style=\"color:{LABEL_COLOURS.get(e['label'], '#000')}\">"
                     f"{esc(e['label'])}</span> / {esc(fmt(e['pursued']))}</h3><p>{esc(e['evidence'])}</p>")
        shifts = "".join(f"<tr><td>{esc(s)}</td><td>{fmt(o['loss'])}</td><td>{esc(o['attainable'])}</td>"
                         f"<td>{fmt(o['attainable_loss'])}</td><td>{esc(o['closest'])}</td><td>{fmt(o['loses'])}</td></tr>"
                         for s, o in e["shifts"].items())
        parts.append("<table class=inner><tr><th>shift</th><th>model loss</th><th>best learner of its class</th>"
                     f"<th>its loss</th><th>closest reference</th><th>loses</th></tr>{shifts}</table>")
        if h is not None:
            parts.append(f'<figure><img alt="training of {esc(e["name"])}" '
                         f'src="data:image/png;base64,{figure_training(e, h)}"><figcaption>Loss (log) and alignment '
                         "with the tracked references over meta-training, on a fixed held-out batch.</figcaption>"
                         "</figure>")
    return "\n".join(parts)


def render_page(entries: list[dict], histories: list[dict] | None = None, title: str = "In-context audit") -> str:
    """A self-contained HTML page around ``html_section``."""
    from probes.report import page

    return page(title, html_section(entries, histories))
