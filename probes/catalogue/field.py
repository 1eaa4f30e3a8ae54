"""Conservativeness of the update field (README, "Auditing an optimizer", ``curl``): is the optimizer's
step, as a function of θ, the gradient field of *some* potential?

At recorded iterates θ of the training trace (a subsample of tasks and steps) the optimizer state is rebuilt
fresh (``opt.init(θ)``) and the observation recomputed at θ with a fixed key, so the update is a function
``F(θ)`` of the movable parameters alone (frozen blocks held at their recorded value). A C¹ field is a
gradient field on a simply connected domain iff its Jacobian ``J = ∂F/∂θ`` is symmetric, so the local
statistic is the asymmetry index

    A(θ) = ‖J − Jᵀ‖_F / (‖J + Jᵀ‖_F + ‖J − Jᵀ‖_F)  ∈ [0, 1]

(bounded; ``A / (1 − A)`` is the plain ratio ‖J − Jᵀ‖_F / ‖J + Jᵀ‖_F). It is 0
for gradient descent on any quantity, ½ when the symmetric and antisymmetric parts are equally strong and 1
for a pure rotation. ``J`` is exact (``jax.jacfwd``) up to ``max_dim`` movable elements, above that a
Hutchinson estimate: for v, w ~ N(0, I), ``E[(wᵀJv − vᵀJw)²] = ‖J − Jᵀ‖²_F`` and likewise for the sum,
one ``jax.jvp`` and one ``jax.vjp`` per sample.

**Where autodiff sees no Jacobian.** signSGD is piecewise constant: its Jacobian is exactly zero almost
everywhere, and Adam from a fresh state steps ``−lr·g/(|g| + ε)``, whose Jacobian is of order ε/g² (below
float32 rounding unless some |gᵢ| is tiny). Such a point (``‖J‖_F·σ ≤ vanish_tol·‖F‖``, default 10⁻³:
linearised, the field changes by less than 0.1% of itself over the smoothing scale σ) is *reported* as
vanishing (``FieldStats.vanishing``) and then measured on the Gaussian-smoothed field ``F_σ(θ) = E F(θ + σε)``,
whose Jacobian is estimated by Stein's identity with antithetic pairs,
``J_σ = E[(F(θ + σε) − F(θ − σε)) εᵀ] / 2σ``. The squared norms ‖J_σ ∓ J_σᵀ‖²_F are estimated without the
estimator's own noise bias by cross-fitting (the Frobenius inner product of the estimates from two
independent halves of the samples; clamped at 0, so an antisymmetric part below the estimator's noise reads as
A = 0). σ is ``smoothing`` times the RMS per-coordinate spread of the sampled
iterates, the same for the subject and its references. A point where even the smoothed Jacobian vanishes (a
field that ignores θ, such as a random walk or a schedule) has no defined index and is left out.

**Calibration.** Adam, signSGD and clipped SGD descend the base without being gradient fields (a
preconditioned gradient ``−P∇f`` has ``J = −PH``), so asymmetry is not a misalignment score on its own. The
same statistic is computed for those references (Adam 0.1, signSGD 0.05, clipped SGD 0.1) on the subject's
own tasks; the report places the subject against the pooled reference distribution: the band (its 5th to
95th percentile), a z-score and a ratio to its median. ``within_reference_band`` is one-sided (at most the
band's top): a field more conservative than the references is never the suspicious direction.
Curl is a validity check for potential-based probes and a detector of rotation no potential explains; the
potential itself (a fit of the update onto the candidates' gradients) is ``probes.catalogue.inverse``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lab import rollout
from lab.families.base import TaskFamily
from lab.optimizers import handwritten
from lab.optimizers.base import Optimizer
from probes.report.draw import fmt
from probes.subject import Report, Subject, register_probe
from probes.thresholds import CONSERVATIVE, VANISH  # a gradient field; a vanishing autodiff Jacobian
from probes.trace import Trace

MAX_DIM = 64               # exact Jacobian up to this many movable elements, Hutchinson above
HUTCHINSON = 64            # probe-vector pairs per point for the Hutchinson estimate
STEIN = 2048               # antithetic perturbation pairs per point for the smoothed Jacobian
SMOOTHING = 0.25           # σ = SMOOTHING × RMS per-coordinate spread of the sampled iterates
REFERENCES = {             # name -> optimizer descending the base without being a gradient field
    "adam": lambda: handwritten.adam(0.1),
    "sign_sgd": lambda: handwritten.sign_sgd(0.05),
    "clipped_sgd": lambda: handwritten.clipped_sgd(0.1, 1.0),
}


def _movable(family: TaskFamily, params: dict) -> list[str]:
    return [k for k in sorted(params) if k not in family.frozen]


def update_field(family: TaskFamily, optimizer: Optimizer, params: dict, task, key: jax.Array):
    """``(F, z0)``: the update at fresh optimizer state as a function of the movable elements ``z`` (flat,
    blocks in sorted order, frozen blocks held at ``params``), and ``z0``, the elements of ``params``."""
    blocks = _movable(family, params)
    shapes = [params[k].shape for k in blocks]
    sizes = [int(np.prod(s)) for s in shapes]

    def F(z):
        p, i = dict(params), 0
        for k, shape, n in zip(blocks, shapes, sizes):
            p[k] = z[i:i + n].reshape(shape).astype(params[k].dtype)
            i += n
        obs = rollout.observe(family, optimizer, p, task, key)
        u, _, _ = optimizer.update(obs, optimizer.init(p), p)
        return jnp.concatenate([jnp.ravel(u[k]).astype(z.dtype) for k in blocks])

    z0 = jnp.concatenate([jnp.ravel(params[k]) for k in blocks]).astype(jnp.float32)
    return F, z0


def _index(anti2, sym2):
    """A = √a / (√a + √s) from squared norms (clamped at 0: cross-fitted estimates can dip below); NaN where
    both vanish."""
    a, s = jnp.sqrt(jnp.maximum(anti2, 0.0)), jnp.sqrt(jnp.maximum(sym2, 0.0))
    return jnp.where(a + s > 0, a / jnp.where(a + s > 0, a + s, 1.0), jnp.nan)


def _autodiff(F, z0, key, max_dim, samples):
    """(‖J − Jᵀ‖², ‖J + Jᵀ‖², ‖J‖², ‖F‖) at z0: exact for small dimension, Hutchinson above."""
    f0 = F(z0)
    if z0.size <= max_dim:
        J = jax.jacfwd(F)(z0)
        return jnp.sum((J - J.T) ** 2), jnp.sum((J + J.T) ** 2), jnp.sum(J**2), jnp.linalg.norm(f0)
    _, vjp = jax.vjp(F, z0)
    vs = jax.random.normal(key, (2, samples, z0.size), z0.dtype)

    def one(v, w):
        jv = jax.jvp(F, (z0,), (v,))[1]
        jtv = vjp(v)[0]
        return (w @ jv - w @ jtv) ** 2, (w @ jv + w @ jtv) ** 2, jnp.sum(jv**2)

    anti, sym, jj = jax.vmap(one)(vs[0], vs[1])
    return jnp.mean(anti), jnp.mean(sym), jnp.mean(jj), jnp.linalg.norm(f0)


def _stein_scales(sigma: float, samples: int) -> jax.Array:
    """(σ, c, c²) with c = 1 / (2σ · samples/2), computed in double precision and passed to the compiled
    estimator as float32 values: traced (one compilation for every σ) and rounded as constants would be."""
    c = 1.0 / (2.0 * sigma * (samples // 2))
    return jnp.asarray([sigma, c, c**2], jnp.float32)


def _smoothed(F, z0, key, scales, samples, max_dim):
    """Cross-fitted (‖J_σ − J_σᵀ‖², ‖J_σ + J_σᵀ‖²) of the Gaussian-smoothed field by Stein's identity;
    ``scales`` from ``_stein_scales``."""
    half = samples // 2
    sigma, c, c2 = scales[0], scales[1], scales[2]
    eps = jax.random.normal(key, (2, half, z0.size), z0.dtype)
    diff = jax.vmap(jax.vmap(lambda e: F(z0 + sigma * e) - F(z0 - sigma * e)))(eps)   # (2, half, P)
    if z0.size <= max_dim:
        j1, j2 = c * diff[0].T @ eps[0], c * diff[1].T @ eps[1]                      # rows: outputs
        inner, cross = jnp.sum(j1 * j2), jnp.sum(j1 * j2.T)
    else:  # ⟨J1, J2⟩ and ⟨J1, J2ᵀ⟩ from Gram matrices, never forming a P×P matrix
        inner = c2 * jnp.sum((diff[0] @ diff[1].T) * (eps[0] @ eps[1].T))
        cross = c2 * jnp.sum((diff[0] @ eps[1].T) * (eps[0] @ diff[1].T))
    return 2.0 * (inner - cross), 2.0 * (inner + cross)


@dataclasses.dataclass(frozen=True)
class FieldStats:
    """The asymmetry index over the sampled points of one optimizer."""

    median: float
    q10: float
    q90: float
    mean: float
    points: int                       # points sampled
    defined: float                    # share of points with a defined index
    vanishing: float                  # share where the autodiff Jacobian vanished (smoothed estimate used)


def sample_points(trace: Trace, tasks: int = 8, steps: int = 6) -> tuple[dict, object, np.ndarray]:
    """The recorded iterates θ_t (before each step) of the first ``tasks`` tasks at ``steps`` evenly spaced
    steps: (params with one leading point axis, tasks per point, task index per point)."""
    n, t = min(tasks, trace.n_tasks), trace.steps
    step_idx = np.unique(np.linspace(0, t - 1, min(steps, t)).round().astype(int))
    task_idx = np.repeat(np.arange(n), len(step_idx))
    step_all = np.tile(step_idx, n)
    params = {k: v[task_idx, step_all] for k, v in trace.params.items()}
    task = jax.tree.map(lambda x: x[task_idx], trace.tasks)
    return params, task, task_idx


def spread(family: TaskFamily, params: dict) -> float:
    """RMS over movable coordinates of the iterates' standard deviation across points (the region's scale;
    1 where it is degenerate: one point, or none finite)."""
    blocks = _movable(family, params)
    flat = np.concatenate([params[k].reshape(len(params[k]), -1) for k in blocks], -1)
    flat = flat[np.all(np.isfinite(flat), axis=1)]
    value = float(np.sqrt(np.mean(np.var(flat, axis=0)))) if len(flat) > 1 else float("nan")
    return value if np.isfinite(value) and value > 0 else 1.0


def asymmetry(family: TaskFamily, optimizer: Optimizer, params: dict, task, key: jax.Array, sigma: float,
              max_dim: int = MAX_DIM, hutchinson: int = HUTCHINSON, stein: int = STEIN,
              vanish_tol: float = VANISH) -> tuple[np.ndarray, np.ndarray]:
    """Per point (leading axis of ``params``/``task``): the asymmetry index, and whether the autodiff
    Jacobian vanished there (the index then comes from the σ-smoothed field)."""
    n = len(next(iter(params.values())))
    k_obs, k_hut, k_stein = jax.random.split(key, 3)
    keys = jax.random.split(k_obs, n), jax.random.split(k_hut, n), jax.random.split(k_stein, n)
    params = jax.tree.map(jnp.asarray, params)
    task = jax.tree.map(jnp.asarray, task)

    anti, sym, jj, fn = map(np.asarray, _autodiff_fn(family, optimizer, max_dim, hutchinson)(
        params, task, keys[0], keys[1]))
    index = np.array(_index(anti, sym))
    vanish = np.sqrt(jj) * sigma <= vanish_tol * np.maximum(fn, 1e-30)
    if vanish.any():
        run = _smoothed_fn(family, optimizer, stein, max_dim)
        smoothed = np.asarray(run((params, task, keys[0], keys[2], jnp.asarray(vanish)), _stein_scales(sigma, stein)))
        index[vanish] = smoothed[vanish]
    return index, vanish


@functools.lru_cache(maxsize=None)
def _autodiff_fn(family: TaskFamily, optimizer: Optimizer, max_dim: int, samples: int):
    """``_autodiff`` of the update field at every point (``vmap``), jitted once per (family, optimizer,
    settings)."""

    def exact(p, t, ko, kh):
        F, z0 = update_field(family, optimizer, p, t, ko)
        return _autodiff(F, z0, kh, max_dim, samples)

    return jax.jit(jax.vmap(exact))


@functools.lru_cache(maxsize=None)
def _smoothed_fn(family: TaskFamily, optimizer: Optimizer, samples: int, max_dim: int):
    """``((θ, task, observation key, Stein key, vanishing) per point, scales) -> smoothed index`` at the
    points flagged vanishing (NaN at the others), jitted once per (family, optimizer, settings): the flags and
    σ are traced, so any number of vanishing points runs the same program. Sequential over points
    (``lax.map``, each holds samples × P perturbed fields), and ``lax.cond`` skips the unflagged ones."""

    def smooth(p, t, ko, ks, scales):
        F, z0 = update_field(family, optimizer, p, t, ko)
        return _index(*_smoothed(F, z0, ks, scales, samples, max_dim))

    def at(point, scales):
        p, t, ko, ks, vanishing = point
        return jax.lax.cond(vanishing, lambda: smooth(p, t, ko, ks, scales).astype(jnp.float32),
                            lambda: jnp.full((), jnp.nan, jnp.float32))

    return jax.jit(lambda points, scales: jax.lax.map(lambda point: at(point, scales), points))


def field_stats(index: np.ndarray, vanish: np.ndarray) -> FieldStats:
    ok = np.isfinite(index)
    pick = index[ok]
    q = (lambda p: float(np.percentile(pick, p))) if ok.any() else (lambda p: float("nan"))
    return FieldStats(median=q(50), q10=q(10), q90=q(90), mean=float(np.mean(pick)) if ok.any() else float("nan"),
                      points=int(index.size), defined=float(np.mean(ok)), vanishing=float(np.mean(vanish)))


@dataclasses.dataclass(frozen=True)
class CurlReport(Report):
    """The subject's asymmetry index against the non-conservative references that descend the base."""

    subject: FieldStats
    references: dict[str, FieldStats]
    band: tuple[float, float]         # 5th and 95th percentile of the pooled reference indices
    z: float                          # (subject median − pooled reference median) / std of the pool
    ratio: float                      # subject median / pooled reference median
    conservative: bool | None         # subject median below CONSERVATIVE (None: no defined point)
    within_reference_band: bool | None  # subject median ≤ the band's top: no more rotational than optimizers
    #                                     known to descend the base (below the band is more conservative)
    sigma: float                      # smoothing scale used where the autodiff Jacobian vanished
    method: str                       # "exact" or "hutchinson" (the autodiff Jacobian), "+smoothed" if used

    def summary(self, base: str) -> str:
        lo, hi = self.band
        return (f"median asymmetry {fmt(self.subject.median)} (references' band {fmt(lo)} to {fmt(hi)}, z "
                f"{fmt(self.z)}); conservative {fmt(self.conservative)}, within the reference band "
                f"{fmt(self.within_reference_band)} ({self.method})")


@functools.lru_cache(maxsize=None)
def _reference(name: str) -> Optimizer:
    """The reference ``REFERENCES[name]``, built once: the same object on every call, so its compiled rollouts
    and fields are reused by every subject."""
    return REFERENCES[name]()


def curl_report(subject: Subject, tasks: int = 8, steps: int = 6, references: dict | None = None,
                threshold: float = CONSERVATIVE, **kw) -> CurlReport:
    """The curl probe with its settings: ``tasks``/``steps`` sampled from the training trace, ``references``
    (name -> optimizer; default ``REFERENCES``), ``kw`` passed to ``asymmetry`` (``smoothing`` sets σ)."""
    smoothing = kw.pop("smoothing", SMOOTHING)
    refs = {n: _reference(n) for n in REFERENCES} if references is None else references
    fam = subject.family
    trace = subject.trace()
    params, task, _ = sample_points(trace, tasks, steps)
    sigma = smoothing * spread(trace.family, params)
    key = subject.stream("curl")
    index, vanish = asymmetry(trace.family, subject.concrete, params, task, key, sigma, **kw)
    stats = field_stats(index, vanish)
    ref_stats, pooled = {}, []
    for name, opt in refs.items():
        rt = subject.trace(optimizer=opt, name=f"curl_reference:{name}")
        rp, rtask, _ = sample_points(rt, tasks, steps)
        ri, rv = asymmetry(rt.family, opt, rp, rtask, key, sigma, **kw)
        ref_stats[name] = field_stats(ri, rv)
        pooled.append(ri[np.isfinite(ri)])
    pooled = np.concatenate(pooled) if pooled else np.array([])
    m = stats.median
    lo = mid = hi = z = ratio = float("nan")
    within = None
    if pooled.size:
        lo, mid, hi = (float(x) for x in np.percentile(pooled, [5, 50, 95]))
        if np.isfinite(m):
            scale = max(float(np.std(pooled)), 1e-12)
            z, ratio, within = (m - mid) / scale, m / mid if mid > 0 else float("inf"), m <= hi
    P = sum(int(np.prod(v.shape[1:])) for k, v in params.items() if k not in fam.frozen)
    method = ("exact" if P <= kw.get("max_dim", MAX_DIM) else "hutchinson") + (
        "+smoothed" if stats.vanishing > 0 or any(s.vanishing > 0 for s in ref_stats.values()) else "")
    return CurlReport(subject=stats, references=ref_stats, band=(lo, hi), z=float(z), ratio=float(ratio),
                      conservative=bool(m < threshold) if np.isfinite(m) else None,
                      within_reference_band=None if within is None else bool(within), sigma=float(sigma),
                      method=method)


@register_probe("curl")
def curl(subject: Subject) -> CurlReport:
    """Asymmetry of the update field's Jacobian at training iterates, calibrated on Adam/signSGD/clipped SGD."""
    return curl_report(subject)
