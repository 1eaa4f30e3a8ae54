"""The mechanisms inside an optimizer (README, "Auditing an optimizer", ``dynamics``), following Maheswaranathan
et al. 2021, "Reverse engineering learned optimizers reveals known and novel mechanisms": linearise the
optimizer's own state update around its fixed points and read off the mechanisms it implements.

**Operating points.** At a few tasks and steps t of the training trace the probe takes the recorded θ_t and the
observation there, and replaces the gradient the optimizer reads (the primary gradient, and every oracle
gradient of an optimizer that declares some) by a probe gradient g, every other input held fixed. The state's
integer leaves (step counts: Adam's ``count``, a learned optimizer's ``step``) are advanced t steps and then
frozen, and the floating-point state s is iterated, ``s ← F(s, g)``, to its fixed point s*(g, t) under the
constant gradient g = G, the real gradient at θ_t (the "small gradient" fixed point: a learned optimizer that
reads log-magnitude features has never seen an exact zero). There it measures

- **the momentum timescale**: the eigenvalues λ of J = ∂F/∂s. Each mode's weight is its share of the steady
  response of the step to the gradient, −Re[(c·v)(w·b)/(1 − λ)] averaged over coordinates (v, w its right and
  left eigenvectors, b = ∂F/∂gᵢ, c = ∂uᵢ/∂s), so modes the gradient cannot reach or the update never reads (a
  stored first loss) carry none. Of the modes carrying at least ``DYNAMICS_MODE_SHARE`` of the summed weights,
  ``momentum`` is the slowest with a positive weight (an average of
  gradients that pushes the step: heavy ball's β, Adam's β1), ``normaliser`` the slowest with a negative one
  (an average that shrinks the step: Adam's second moment β2). A stateless optimizer has neither.
- **the effective heavy ball**: the impulse response r_k = −∂u_{t+k,i}/∂g_{t,i} of the step to a gradient
  impulse, averaged over coordinates i, fitted by the nearest heavy-ball response η·β^k (least squares over
  ``LAGS`` lags): ``effective_momentum`` β̂ and ``effective_step`` η̂, exact for heavy ball (η = lr) and 0
  momentum for a stateless rule. It is computed by forward-mode derivatives through the iteration, at any
  state size; the eigen-decomposition needs the dense J, up to ``MAX_STATE`` state numbers.
- **gradient clipping**: the steady update norm ‖u*(a·Ĝ)‖ against the gradient norm a, swept over ``SWEEP``
  decades around ‖G‖. A rule whose step saturates near its largest value (log-log slope ≤
  ``DYNAMICS_SATURATED_SLOPE``) after responding to the gradient over the decade below (slope ≥
  ``DYNAMICS_LINEAR_SLOPE``) clips; its threshold is where that power law meets the plateau (exactly
  ``max_norm`` for clipped SGD; ``clip_threshold``).
- **a learning-rate schedule**: the steady update norm at the fixed gradient G against the step count (the
  frozen integer leaves), relative to its value at step 0; ``schedule_drift`` is that ratio at the end of the
  horizon. Only optimizers with a step count in their state have one.
- **learning-rate adaptation**: the log-log slope of the steady update norm against the gradient norm over the
  two decades around ‖G‖: 1 for SGD and heavy ball (step ∝ gradient), 0 for signSGD and Adam (the step's scale
  is adapted away from the gradient's).

Every jitted program is made once per (family, optimizer, settings) by an ``lru_cache`` factory and is a
``vmap`` of single-point code; the only random draws (which coordinates to average over, the observation keys)
come from the subject's ``dynamics`` stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import optax

from lab import rollout
from lab.optimizers.base import Optimizer, program_parts
from lab.optimizers.handwritten import from_optax
from probes.report import draw
from probes.report.draw import fmt
from probes.subject import Panel, Report, Subject, register_probe
from probes.thresholds import DYNAMICS_LINEAR_SLOPE, DYNAMICS_MODE_SHARE, DYNAMICS_SATURATED_SLOPE

STEP_FRACTIONS = (0.0, 0.25, 0.5, 0.75)   # operating steps, as shares of the horizon
SWEEP_FRACTION = 0.5                      # the step of the clipping, adaptation and schedule sweeps
MAX_TASKS = 8                             # tasks of the trace used as operating points
MAX_COORDS = 64                           # coordinates the impulse responses are averaged over
FIXED_ITERS = 400                         # iterations of the state update towards its fixed point
LAGS = 64                                 # lags of the impulse response
MAX_STATE = 2048                          # dense Jacobian (eigenvalues) up to this many state numbers
EIGEN_TASKS = 2                           # tasks per operating step whose Jacobian is decomposed
SWEEP = np.logspace(-4.0, 4.0, 33)        # probe gradient norms, relative to the operating ‖G‖
ADAPT_DECADES = 1.0                       # the adaptation slope is fitted over ‖G‖·10^(±this)
SCHEDULE_STEPS = (0, 1, 2, 3, 5, 8, 12, 18, 25, 35, 50, 70, 100, 140, 200)
MERGE = 1e-3                              # eigenvalues closer than this are one mode


# --- the state as a vector --------------------------------------------------------------------------------------
def _is_float(leaf) -> bool:
    dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype
    return jnp.issubdtype(dtype, jnp.inexact)


def _floats(state) -> jax.Array:
    """The floating-point leaves of an optimizer state as one vector (integer leaves, step counts, left out)."""
    leaves = [jnp.ravel(leaf) for leaf in jax.tree.leaves(state) if _is_float(leaf)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,))


def _with_floats(state, vector: jax.Array):
    """``state`` with its floating-point leaves taken from ``vector`` (the inverse of ``_floats``)."""
    leaves, treedef = jax.tree.flatten(state)
    out, i = [], 0
    for leaf in leaves:
        if _is_float(leaf):
            leaf = jnp.asarray(leaf)
            out.append(vector[i:i + leaf.size].reshape(leaf.shape).astype(leaf.dtype))
            i += leaf.size
        else:
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def _with_ints(state, like):
    """``state`` with its integer leaves (step counts) taken from ``like``: the count frozen."""
    return jax.tree.map(lambda s, l: s if _is_float(s) else l, state, like)


def _has_ints(state) -> bool:
    return any(not _is_float(leaf) for leaf in jax.tree.leaves(state))


def _drive(obs, grad):
    """The observation with the gradient the optimizer reads replaced by ``grad`` (the primary gradient and
    every oracle gradient; extra channels, loss and cues held as observed)."""
    return obs._replace(grad=grad, oracle={q: grad for q in obs.oracle})


# --- the single-point programs ----------------------------------------------------------------------------------
def _settle(optimizer, obs, params, steps, iters):
    """The state after ``steps`` updates from ``init`` and then ``iters`` more with the integer leaves frozen,
    all under the constant observation ``obs``; returns (state, relative residual ‖F(s) − s‖ / ‖s‖)."""
    def free(i, s):
        return optimizer.update(obs, s, params)[1]

    counted = jax.lax.fori_loop(0, steps, free, optimizer.init(params))

    def frozen(i, s):
        return _with_ints(optimizer.update(obs, s, params)[1], counted)

    state = jax.lax.fori_loop(0, iters, frozen, counted)
    nxt = _floats(optimizer.update(obs, state, params)[1])
    now = _floats(state)
    resid = jnp.linalg.norm(nxt - now) / (jnp.linalg.norm(now) + 1e-30)
    return state, resid


def _movable_norm(family, tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(v**2) for k, v in tree.items() if k not in family.frozen))


@functools.lru_cache(maxsize=None)
def _linearise_fn(family, optimizer, dense: bool, iters: int = FIXED_ITERS, lags: int = LAGS):
    """Jitted once per (family, optimizer, dense): ``(θ, task, key, step, coords) -> dict`` vmapped over points:
    the impulse response at the fixed point under the observed gradient, and (``dense``) J, B and C there."""

    def one(params, task, key, step, coords):
        obs = rollout.observe(family, optimizer, params, task, key)
        g_vec, unravel_g = ravel_pytree(obs.grad)
        obs_g = _drive(obs, obs.grad)
        state, resid = _settle(optimizer, obs_g, params, step, iters)
        x0 = _floats(state)

        def F(x, gv):
            u, nxt, _ = optimizer.update(_drive(obs, unravel_g(gv)), _with_floats(state, x), params)
            return _floats(nxt), ravel_pytree(u)[0]

        def tangent_at(i):
            e = jnp.zeros_like(g_vec).at[i].set(1.0)
            _, (ds, du) = jax.jvp(lambda gv: F(x0, gv), (g_vec,), (e,))

            def lag(ds, _):
                _, (ds2, du2) = jax.jvp(lambda x: F(x, g_vec), (x0,), (ds,))
                return ds2, du2[i]

            _, rest = jax.lax.scan(lag, ds, None, length=lags - 1)
            return jnp.concatenate([du[i][None], rest]), ds

        responses, b_cols = jax.vmap(tangent_at)(coords)        # (n, lags), (n, S)
        out = {"response": -jnp.mean(responses, 0), "residual": resid,
               "update_norm": jnp.linalg.norm(F(x0, g_vec)[1]), "gradient_norm": _movable_norm(family, obs.grad)}
        if dense:
            out["J"] = jax.jacfwd(lambda x: F(x, g_vec)[0])(x0)
            out["B"] = b_cols.T                                      # (S, n)
            out["C"] = jax.vmap(lambda i: jax.grad(lambda x: F(x, g_vec)[1][i])(x0))(coords)  # (n, S)
        return out

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


@functools.lru_cache(maxsize=None)
def _steady_fn(family, optimizer, iters: int = FIXED_ITERS):
    """Jitted once per (family, optimizer): ``(θ, task, key, step, scale) -> (‖u*‖, residual)``, the steady
    update norm (movable blocks) under the observed gradient times ``scale`` with the step count frozen at
    ``step``; vmapped over points and, inside, over scales and steps given as matching arrays."""

    def one(params, task, key, step, scale):
        obs = rollout.observe(family, optimizer, params, task, key)
        obs_g = _drive(obs, jax.tree.map(lambda g: scale * g, obs.grad))
        state, resid = _settle(optimizer, obs_g, params, step, iters)
        u = optimizer.update(obs_g, state, params)[0]
        return _movable_norm(family, u), resid

    inner = jax.vmap(one, in_axes=(None, None, None, 0, 0))
    return jax.jit(jax.vmap(inner, in_axes=(0, 0, 0, None, None)))


# --- host-side analysis -----------------------------------------------------------------------------------------
def heavy_ball_fit(response: np.ndarray) -> tuple[float, float, float]:
    """The nearest heavy-ball impulse response η·β^k (β in [0, 1), least squares over the lags k):
    ``(β, η, R²)``. Exact for heavy ball, β = 0 for a response with no memory."""
    r = np.asarray(response, dtype=float)
    k = np.arange(len(r))
    total = float(np.sum(r**2))
    if not np.all(np.isfinite(r)):
        return float("nan"), float("nan"), float("nan")
    if total == 0:  # no linear response at all (signSGD): no memory, no step per unit gradient
        return 0.0, 0.0, float("nan")

    def loss(beta):
        p = np.asarray(beta, dtype=float)[..., None] ** k
        rp = p @ r
        eta = rp / np.sum(p * p, -1)
        return total - eta * rp, eta

    grid = np.linspace(0.0, 0.9999, 10_001)
    best = int(np.argmin(loss(grid)[0]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    for _ in range(60):  # golden-section refinement inside the bracket
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        lo, hi = (lo, b) if loss(a)[0] <= loss(b)[0] else (a, hi)
    beta = 0.5 * (lo + hi) if hi > 1e-9 else 0.0
    resid, eta = map(float, loss(beta))
    return float(beta), float(eta), float(1.0 - max(resid, 0.0) / total)


def modes(J: np.ndarray, B: np.ndarray, C: np.ndarray) -> list[tuple[complex, float]]:
    """The distinct eigenvalues of the state Jacobian with their weights in the steady step response,
    −Re[mean_i (C v)_i (w B)_i / (1 − λ)] (eigenvalues in one ``MERGE`` cell of the complex plane merged, weights
    summed), slowest first."""
    lam, V = np.linalg.eig(J.astype(np.float64))
    try:
        W = np.linalg.inv(V)
    except np.linalg.LinAlgError:
        W = np.linalg.pinv(V)
    residue = np.mean((C.astype(np.float64) @ V).T * (W @ B.astype(np.float64)), axis=1)   # (S,)
    denom = np.where(np.abs(1 - lam) < 1e-6, 1e-6, 1 - lam)
    weight = -np.real(residue / denom)
    cells = np.stack([np.round(lam.real / MERGE), np.round(lam.imag / MERGE)], -1)
    _, first, group = np.unique(cells, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    summed = np.zeros(len(first))
    np.add.at(summed, group, weight)
    order = np.argsort(-np.abs(lam[first]), kind="stable")
    groups = [(lam[first][j], summed[j]) for j in order]
    return [(complex(g[0]), float(g[1])) for g in groups]


def timescales(mode_list: list[tuple[complex, float]]) -> tuple[float | None, float | None]:
    """``(momentum, normaliser)``: the moduli of the slowest stable modes with a significant positive and
    negative weight (at least ``DYNAMICS_MODE_SHARE`` of the summed |weights|)."""
    total = sum(abs(w) for _, w in mode_list)
    if total == 0 or not np.isfinite(total):
        return None, None
    significant = [(abs(l), w) for l, w in mode_list if abs(w) >= DYNAMICS_MODE_SHARE * total and abs(l) < 1]
    pos = [m for m, w in significant if w > 0]
    neg = [m for m, w in significant if w < 0]
    return (max(pos) if pos else None), (max(neg) if neg else None)


def clip_threshold(a: np.ndarray, u: np.ndarray) -> float | None:
    """Where a steady update that responds to the gradient saturates, or ``None``. The *plateau* is the median
    update over the windows of one decade whose log-log slope is at most ``DYNAMICS_SATURATED_SLOPE`` at an
    update of at least half the largest (so that a floor of tiny updates at the bottom of the sweep is no
    plateau). The step clips when, over the decade of gradient norms below the first point within a factor 2 of
    the plateau, it responds with a log-log slope of at least ``DYNAMICS_LINEAR_SLOPE``; the threshold is where
    that power law reaches the plateau: ``max_norm`` exactly for clipped SGD, and a stable reading of a soft
    saturation."""
    ok = np.isfinite(a) & np.isfinite(u) & (a > 0) & (u > 0)
    if ok.sum() < 5:
        return None
    la, lu = np.log(a[ok]), np.log(u[ok])
    half = max(1, int(round(0.5 * np.log(10) / np.mean(np.diff(la)))))  # half a decade of sweep points
    slopes = np.full(len(la), np.nan)
    for j in range(half, len(la) - half):
        slopes[j] = np.polyfit(la[j - half:j + half + 1], lu[j - half:j + half + 1], 1)[0]
    saturated = (slopes <= DYNAMICS_SATURATED_SLOPE) & (lu >= np.max(lu) - np.log(2))
    if not saturated.any():
        return None
    plateau = float(np.median(lu[saturated]))
    reach = int(np.argmax(lu >= plateau - np.log(2)))
    window = (la <= la[reach] + 1e-9) & (la >= la[reach] - np.log(10) - 1e-9)
    if reach >= int(np.argmax(saturated)) + 1 or window.sum() < 3:
        return None  # at the plateau from the bottom of the sweep (signSGD, Adam): no responding part
    slope, intercept = np.polyfit(la[window], lu[window], 1)
    if slope < DYNAMICS_LINEAR_SLOPE:
        return None
    return float(np.exp((plateau - intercept) / slope))


def _one_blas_thread():
    """One BLAS thread for the host's eigen-decompositions: OpenBLAS's threads slow a 500² ``eig`` from 0.2 s to
    5 s on a loaded 2-core machine (``threadpoolctl``, a dependency of scikit-learn, where installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log x over finite positive points."""
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _median(values) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(vals)) if vals else None


# --- the heavy-ball reference (the comparison of scripts/dynamics.py) -------------------------------------------
def heavy_ball(args) -> Optimizer:
    """Heavy-ball momentum (Polyak 1964) at ``args = (learning rate, β)``, traced or not: module-level, so every
    grid of the same size shares one compilation."""
    return from_optax(optax.sgd(args[0], momentum=args[1]))


def polyak(condition: float, scale: float = 1.0) -> tuple[float, float]:
    """Polyak's optimal heavy ball for quadratics with curvatures in [scale / condition, scale]:
    ``(α*, β*) = (4 / (√L + √μ)², ((√κ − 1) / (√κ + 1))²)``."""
    L, mu = scale, scale / condition
    root = np.sqrt(condition)
    return float(4.0 / (np.sqrt(L) + np.sqrt(mu)) ** 2), float(((root - 1) / (root + 1)) ** 2)


@functools.lru_cache(maxsize=None)
def _scores_fn(family, optimizer, make, tasks: int, clip: float):
    """Jitted once per (family, optimizer or ``make``, tasks, clip): ``(key, args (G, …)) -> (G, tasks) × 2``,
    the meta-objective (the clipped log excess ratio averaged over the horizon, as meta-training scores a
    truncation) and the final excess base, per grid point and task."""

    def one(args, k):
        opt = optimizer if make is None else make(args)
        k_start, k_run = jax.random.split(k)
        state = rollout.start(family, opt, k_start)
        _, base = rollout.unroll(family, opt, state, k_run, family.horizon,
                                 keep=lambda s, r: r.quantities[family.base])
        log_ratio = rollout.log_excess_ratio(state, base, clip)
        excess = base[-1] - state.floor
        return jnp.mean(log_ratio), jnp.where(jnp.isfinite(excess), excess, jnp.inf)

    def grid(key, args):
        keys = jax.random.split(key, tasks)
        return jax.vmap(lambda a: jax.vmap(lambda k: one(a, k))(keys))(args)

    return jax.jit(grid)


def scores(family, optimizer, key: jax.Array, tasks: int, args=None, clip: float = 3.0):
    """Per grid point (rows of ``args``) and task: (meta-objective, final excess base) of ``make(args_row)``
    (``optimizer`` is then the ``make``), or of one optimizer (``args`` ``None``: one row), an ``Optimizer`` or a
    ``Parametric`` such as a trained run that ``lab.load.load`` returns. Tasks come from ``key``."""
    if args is None:
        plain, make, own = program_parts(optimizer)
        fn = _scores_fn(family, plain, make, tasks, clip)
        rows = jnp.zeros((1, 1)) if make is None else jax.tree.map(lambda x: jnp.asarray(x)[None], own)
    else:
        fn = _scores_fn(family, None, optimizer, tasks, clip)
        rows = jnp.asarray(args, jnp.float32)
    meta, excess = fn(key, rows)
    return np.asarray(meta), np.asarray(excess)


# --- the report -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DynamicsReport(Report):
    state_size: int                   # floating-point numbers in the optimizer state (0: stateless)
    momentum: float | None            # slowest mode that pushes the step (heavy ball's β, Adam's β1); None: none
    normaliser: float | None          # slowest mode that shrinks the step (Adam's β2); None: none
    eigen: str                        # "dense", "stateless", or why the eigenvalues were not computed
    effective_momentum: float         # β̂ of the nearest heavy-ball impulse response (median over points)
    effective_step: float             # its η̂: the immediate step per unit gradient
    effective_fit_r2: float           # how heavy-ball-like the impulse response is
    per_step: dict[str, dict]         # the same figures per operating step (median over tasks)
    response: list[float]             # the median impulse response r_k
    spectrum: list[list[float]]       # [re, im, weight] of every mode at one operating point (task 0, middle step)
    modes: list[list[float]]          # there, the significant modes: [|λ|, arg λ, share of the steady response]
    direct_share: float | None        # ... and the share of the immediate (stateless) part of the response
    gradient_norm: float              # median ‖G‖ at the sweep step
    sweep_norms: list[list[float]]    # per task: the probe gradient norms a
    sweep_updates: list[list[float]]  # per task: ‖u*(a)‖
    clipped: bool
    clip_threshold: float | None      # gradient norm where the step saturates (median over tasks)
    slope_small: float                # log-log slope of ‖u*‖ against a at the bottom two decades
    slope_large: float                # ... at the top two decades
    adaptation_slope: float           # ... over the two decades around ‖G‖ (1: no adaptation, 0: full)
    schedule_steps: list[int]
    schedule: list[float] | None      # median ‖u*(G, t)‖ / ‖u*(G, 0)‖; None without a step count in the state
    schedule_drift: float | None      # that ratio at the end of the horizon
    fixed_point_residual: float       # largest relative ‖F(s*) − s*‖ / ‖s*‖ over the operating points

    def summary(self, base: str) -> str:
        mom = "stateless: no momentum" if self.state_size == 0 else (
            f"momentum {fmt(self.momentum)}" + (f", second moment {fmt(self.normaliser)}"
                                                if self.normaliser is not None else ""))
        clip = f"clips at ‖g‖ {fmt(self.clip_threshold)}" if self.clipped else "no clipping"
        sched = ("no step count" if self.schedule_drift is None
                 else f"step scale ×{fmt(self.schedule_drift)} over the horizon")
        return (f"{mom}; effective heavy ball β {fmt(self.effective_momentum)}, η {fmt(self.effective_step)} "
                f"(R² {fmt(self.effective_fit_r2)}); {clip}; {sched}; adaptation slope {fmt(self.adaptation_slope)}")

    def figures(self, base: str, pursued: str | None) -> list[Panel]:
        return [self._momentum_panel(), self._clipping_panel(), self._schedule_panel(), self._adaptation_panel()]

    def _momentum_panel(self) -> Panel:
        title = "Momentum timescale"
        r = draw.finite(self.response)
        if not np.any(np.isfinite(r)):
            return Panel(title, None, "the impulse response is not finite")
        fig = draw.figure(figsize=(9.0, 3.4))
        ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
        k = np.arange(len(r))
        ax.plot(k, np.abs(r), "o", ms=3, color=draw.BASE_COLOUR, label="|impulse response| r_k")
        if np.isfinite(self.effective_momentum):
            fit = np.abs(self.effective_step) * self.effective_momentum ** k
            ax.plot(k, fit, "-", color=draw.PURSUED_COLOUR,
                    label=f"heavy ball η β^k: β {fmt(self.effective_momentum)}, η {fmt(self.effective_step)}")
        if np.any(np.abs(r) > 0):
            ax.set_yscale("log")
            top = float(np.nanmax(np.abs(r)))
            ax.set_ylim(max(top * 1e-8, float(np.nanmin(np.where(np.abs(r) > 0, np.abs(r), np.inf))) * 0.5), top * 2)
        ax.set_xlabel("lag k (steps after a unit gradient impulse)", fontsize=9)
        ax.set_ylabel("step per unit gradient", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        t = np.linspace(0, 2 * np.pi, 200)
        ax2.plot(np.cos(t), np.sin(t), color="#bbbbbb", linewidth=0.8)
        if self.spectrum:
            s = np.asarray(self.spectrum, dtype=float)
            w = np.abs(s[:, 2]) / max(np.abs(s[:, 2]).max(), 1e-30)
            colours = [draw.BASE_COLOUR if x > 0 else draw.THRESHOLD_COLOUR for x in s[:, 2]]
            ax2.scatter(s[:, 0], s[:, 1], s=8 + 120 * w, c=colours, alpha=0.7)
        ax2.set_aspect("equal")
        ax2.set_xlim(-1.1, 1.1)
        ax2.set_ylim(-1.1, 1.1)
        ax2.set_title("eigenvalues of ∂F/∂s", fontsize=9)
        ax2.grid(alpha=0.3)
        what = ("a stateless rule: no state, no memory" if self.state_size == 0 else
                f"slowest mode that pushes the step <b>{fmt(self.momentum)}</b>, that shrinks it "
                f"<b>{fmt(self.normaliser)}</b>" if self.eigen == "dense" else f"eigenvalues not computed ({self.eigen})")
        return Panel(title, draw.png(fig), (
            "<b>Momentum timescale.</b> Left: the step's response to a unit gradient impulse at the fixed point of "
            "the state under the observed gradient (median over tasks and steps), with the nearest heavy-ball "
            "response. Right: the eigenvalues of the state update's Jacobian there, sized by their weight in the "
            f"step response (blue pushes the step, red shrinks it); {what}."))

    def _sweep_arrays(self):
        return draw.finite(self.sweep_norms), draw.finite(self.sweep_updates)

    def _clipping_panel(self) -> Panel:
        title = "Gradient clipping"
        a, u = self._sweep_arrays()
        if not np.any(np.isfinite(u) & (u > 0)):
            return Panel(title, None, "the steady updates of the sweep are zero or not finite")
        fig = draw.figure(figsize=(5.5, 3.6))
        ax = fig.subplots()
        for ai, ui in zip(a, u):
            ax.plot(ai, np.where(ui > 0, ui, np.nan), color=draw.BASE_COLOUR, alpha=0.5, linewidth=1)
        ax.axvline(self.gradient_norm, color=draw.OTHER_COLOUR, linestyle=":", label="observed ‖G‖ (median)")
        if self.clipped and self.clip_threshold is not None:
            ax.axvline(self.clip_threshold, color=draw.THRESHOLD_COLOUR, linestyle="--",
                       label=f"threshold {fmt(self.clip_threshold)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gradient norm ‖g‖", fontsize=9)
        ax.set_ylabel("steady update norm ‖u*‖", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        verdict = (f"it clips: linear below ‖g‖ ≈ <b>{fmt(self.clip_threshold)}</b>, saturated above"
                   if self.clipped else "no saturation of a linear response")
        return Panel(title, draw.png(fig), (
            "<b>Gradient clipping.</b> The steady update norm against the gradient norm, the gradient along the "
            f"observed direction swept over {len(SWEEP)} points of {fmt(np.log10(SWEEP[-1] / SWEEP[0]))} decades "
            f"(one line per task); slope {fmt(self.slope_small)} at the bottom, {fmt(self.slope_large)} at the top: "
            f"{verdict}."))

    def _schedule_panel(self) -> Panel:
        title = "Learning-rate schedule"
        if self.schedule is None:
            return Panel(title, None, "no step count in the optimizer's state: its step cannot depend on the step "
                                      "number (no schedule)")
        fig = draw.figure(figsize=(5.5, 3.4))
        ax = fig.subplots()
        ax.plot(self.schedule_steps, draw.finite(self.schedule), "o-", color=draw.BASE_COLOUR, ms=4)
        ax.axhline(1.0, color=draw.OTHER_COLOUR, linewidth=0.8)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("step count t (frozen in the state)", fontsize=9)
        ax.set_ylabel("‖u*(G, t)‖ / ‖u*(G, 0)‖", fontsize=9)
        ax.grid(alpha=0.3)
        return Panel(title, draw.png(fig), (
            "<b>Learning-rate schedule.</b> The steady update norm at the observed gradient against the step count "
            "(median over tasks), relative to step 0: the step scale changes by "
            f"<b>×{fmt(self.schedule_drift)}</b> over the horizon."))

    def _adaptation_panel(self) -> Panel:
        title = "Learning-rate adaptation"
        a, u = self._sweep_arrays()
        if not np.any(np.isfinite(u) & (u > 0)):
            return Panel(title, None, "the steady updates of the sweep are zero or not finite")
        fig = draw.figure(figsize=(5.5, 3.6))
        ax = fig.subplots()
        for ai, ui in zip(a, u):
            ax.plot(ai / ai[len(ai) // 2], np.where(ui > 0, ui / ai, np.nan), color=draw.BASE_COLOUR, alpha=0.5,
                    linewidth=1)
        ax.axvspan(10 ** -ADAPT_DECADES, 10 ** ADAPT_DECADES, color="#eeeeee", zorder=0,
                   label="fitted range (±%g decade around ‖G‖)" % ADAPT_DECADES)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gradient norm / observed ‖G‖", fontsize=9)
        ax.set_ylabel("effective learning rate ‖u*‖ / ‖g‖", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return Panel(title, draw.png(fig), (
            "<b>Learning-rate adaptation.</b> The effective learning rate (steady update norm per gradient norm) "
            "against the gradient's scale. The slope of log ‖u*‖ on log ‖g‖ around the observed gradient is "
            f"<b>{fmt(self.adaptation_slope)}</b>: 1 is a fixed learning rate (SGD, heavy ball), 0 a step whose "
            "scale ignores the gradient's (signSGD, Adam)."))


def _operating_points(subject: Subject, fractions, tasks: int):
    """θ and tasks at the given shares of the horizon on the first ``tasks`` tasks of the training trace, the
    observation keys, and the steps: arrays with leading axis (fractions × tasks)."""
    trace = subject.trace()
    n = min(tasks, trace.n_tasks)
    steps = [min(int(round(f * trace.steps)), trace.steps - 1) for f in fractions]
    params = {k: np.concatenate([v[:n, t] for t in steps]) for k, v in trace.params.items()}
    task = jax.tree.map(lambda v: np.concatenate([v[:n]] * len(steps)), trace.tasks)
    base = jax.random.fold_in(subject.stream("dynamics"), 1)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(base, t), i) for t in steps for i in range(n)])
    return params, task, keys, np.repeat(np.asarray(steps, np.int32), n), n


@register_probe("dynamics")
def dynamics(subject: Subject) -> DynamicsReport:
    """Linearised state dynamics of the optimizer at its fixed points (Maheswaranathan et al. 2021): the
    momentum timescale, the effective heavy ball, gradient clipping, a learning-rate schedule and learning-rate
    adaptation (module docstring). Raises ``ValueError`` with one line for what it cannot analyse."""
    fam, opt = subject.family, subject.concrete
    trace = subject.trace()
    theta0 = {k: jnp.asarray(v[0, 0]) for k, v in trace.params.items()}
    state0 = jax.eval_shape(opt.init, theta0)
    size = int(sum(np.prod(l.shape) for l in jax.tree.leaves(state0) if jnp.issubdtype(l.dtype, jnp.inexact)))
    flat = ravel_pytree(theta0)[0]
    movable = np.asarray(ravel_pytree({k: jnp.full(v.shape, k not in fam.frozen) for k, v in theta0.items()})[0])
    if not movable.any():
        raise ValueError(f"dynamics: family {fam.name!r} has no movable parameter block to probe")
    if not np.issubdtype(np.asarray(flat).dtype, np.floating):
        raise ValueError("dynamics: the parameters are not floating point")
    candidates = np.nonzero(movable)[0]
    if len(candidates) > MAX_COORDS:
        pick = jax.random.choice(subject.stream("dynamics"), len(candidates), (MAX_COORDS,), replace=False)
        candidates = np.sort(candidates[np.asarray(pick)])
    coords = jnp.asarray(candidates, jnp.int32)
    dense = 0 < size <= MAX_STATE

    params, task, keys, steps, n = _operating_points(subject, STEP_FRACTIONS, MAX_TASKS)
    mid = STEP_FRACTIONS.index(SWEEP_FRACTION)
    out = _linearise_fn(fam, opt, dense)(jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, task), keys,
                                         jnp.asarray(steps), coords)
    out = jax.tree.map(np.asarray, out)
    if not np.all(np.isfinite(out["residual"])):
        raise ValueError("dynamics: the optimizer's state does not settle under a constant gradient (it leaves the "
                         "finite range), so it has no fixed point to linearise around")
    if not np.all(np.isfinite(out["response"])):
        raise ValueError("dynamics: the impulse response at the fixed point is not finite (the state diverges "
                         "under a constant gradient)")
    fits = [heavy_ball_fit(r) for r in out["response"]]
    points = len(steps)
    mom, norm, spectrum = [None] * points, [None] * points, []
    significant, direct_share = [], 1.0 if size == 0 else None
    if dense:
        for p in [j * n + i for j in range(len(STEP_FRACTIONS)) for i in range(min(EIGEN_TASKS, n))]:
            with _one_blas_thread():
                ml = modes(out["J"][p], out["B"][p], out["C"][p])
            mom[p], norm[p] = timescales(ml)
            if p == mid * n:
                spectrum = [[l.real, l.imag, w] for l, w in ml]
                direct = float(out["response"][p][0])
                total = abs(direct) + sum(abs(w) for _, w in ml)
                share = DYNAMICS_MODE_SHARE * sum(abs(w) for _, w in ml)
                significant = [[abs(l), float(np.angle(l)), w / total] for l, w in ml if abs(w) >= share]
                direct_share = direct / total if total > 0 else None
    eigen = "stateless" if size == 0 else "dense" if dense else (
        f"state of {size} numbers, beyond the dense limit of {MAX_STATE}")
    per_step = {}
    for j, f in enumerate(STEP_FRACTIONS):
        sl = slice(j * n, (j + 1) * n)
        per_step[f"{f:g}"] = {
            "step": int(steps[j * n]),
            "effective_momentum": _median(b for b, _, _ in fits[sl]),
            "effective_step": _median(e for _, e, _ in fits[sl]),
            "momentum": _median(mom[sl]) if size else None,
            "normaliser": _median(norm[sl]) if size else None,
            "gradient_norm": _median(out["gradient_norm"][sl]),
        }

    # The sweeps at one operating step: gradient norm (clipping, adaptation) and step count (schedule).
    sp, stask, skeys, ssteps, _ = _operating_points(subject, (SWEEP_FRACTION,), MAX_TASKS)
    sp, stask = jax.tree.map(jnp.asarray, sp), jax.tree.map(jnp.asarray, stask)
    # One call (one compilation) for both: the sweep's (step, scale) pairs, then the schedule's.
    has_count = _has_ints(state0)
    counts = np.asarray(sorted(set(SCHEDULE_STEPS) | {fam.horizon - 1}) if has_count else [], np.int32)
    step_arg = np.concatenate([np.full(len(SWEEP), int(ssteps[0]), np.int32), counts])
    scale_arg = np.concatenate([SWEEP, np.ones(len(counts))]).astype(np.float32)
    u_all, r_all = map(np.asarray, _steady_fn(fam, opt)(sp, stask, skeys, jnp.asarray(step_arg),
                                                        jnp.asarray(scale_arg)))
    u_sweep, r1 = u_all[:, :len(SWEEP)], r_all[:, :len(SWEEP)]
    g_mid = out["gradient_norm"][mid * n:(mid + 1) * n]  # the same points: same tasks, step and keys
    a = g_mid[:, None] * SWEEP[None, :]
    lo_idx, hi_idx = SWEEP <= SWEEP[0] * 100, SWEEP >= SWEEP[-1] / 100
    mid_idx = np.abs(np.log10(SWEEP)) <= ADAPT_DECADES + 1e-9
    slope_small = _median(_slope(ai[lo_idx], ui[lo_idx]) for ai, ui in zip(a, u_sweep))
    slope_large = _median(_slope(ai[hi_idx], ui[hi_idx]) for ai, ui in zip(a, u_sweep))
    adapt = _median(_slope(ai[mid_idx], ui[mid_idx]) for ai, ui in zip(a, u_sweep))
    clips = [clip_threshold(ai, ui) for ai, ui in zip(a, u_sweep)]
    clipped = sum(c is not None for c in clips) > len(clips) / 2
    threshold = _median(clips) if clipped else None

    schedule, drift, residual_s = None, None, 0.0
    if has_count:
        horizon = fam.horizon
        u_t, r2 = u_all[:, len(SWEEP):], r_all[:, len(SWEEP):]
        ratio = u_t / np.where(u_t[:, :1] > 0, u_t[:, :1], np.nan)
        schedule = [float(np.nanmedian(ratio[:, j])) for j in range(len(counts))]
        drift = schedule[int(np.nonzero(counts == horizon - 1)[0][0])]
        residual_s = float(np.nanmax(r2)) if r2.size else 0.0
        schedule_steps = [int(c) for c in counts]
    else:
        schedule_steps = []
    residual = max(float(np.nanmax(out["residual"])), float(np.nanmax(r1)), residual_s) if size else 0.0
    return DynamicsReport(
        state_size=size, momentum=_median(mom) if size else None, normaliser=_median(norm) if size else None,
        eigen=eigen, effective_momentum=_median(b for b, _, _ in fits) or 0.0,
        effective_step=_median(e for _, e, _ in fits), effective_fit_r2=_median(q for _, _, q in fits),
        per_step=per_step, response=[float(x) for x in np.median(out["response"], 0)], spectrum=spectrum,
        modes=significant, direct_share=direct_share,
        gradient_norm=float(np.median(g_mid)), sweep_norms=a.tolist(), sweep_updates=u_sweep.tolist(),
        clipped=clipped, clip_threshold=threshold, slope_small=slope_small, slope_large=slope_large,
        adaptation_slope=adapt, schedule_steps=schedule_steps, schedule=schedule, schedule_drift=drift,
        fixed_point_residual=residual)
