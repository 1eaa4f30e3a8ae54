"""Reference in-context learners in closed form, each given as its *implied weights* ``ŵ(context)`` (every one
is linear in the query: ``ŷ = ŵ·x_q``), with the step sizes that are optimal on a family.

- ``gd``: K steps of gradient descent from w = 0 on the in-context mean loss ``(1/2N) Σ (w·x_i − y_i)²``.
- ``gdpp``: GD++ of von Oswald et al. 2022 (§4): beside each GD step every input, the query's included, is
  transformed ``x ← (I − γ A) x`` with ``A = XᵀX/N`` of the current inputs; this is exactly what a looped linear
  self-attention layer with ``P = −diag(γ I, η)``, ``Q = diag(I, 0)`` computes (``models.gd_lsa``).
- ``ls``, ``ridge`` (sum convention ``(XᵀX + λI)⁻¹Xᵀy``), ``ls_masked``, ``pool_posterior`` (the exact posterior
  mean over the pool) and ``pool_gaussian`` (the posterior mean under a Gaussian prior with the pool's mean and
  covariance: what a linear learner can do with a pool).

**Spectral closed forms.** For w ~ N(0, τ²I), a query independent of the context with E[x_q x_qᵀ] = v I, and a
learner ``ŵ = m(A) A⁻¹ b`` with ``b = Xᵀy/N`` (every reference above but the pool ones), the expected loss is
``½ v [τ² Σ_k (1 − m(a_k))² + (σ²/N) Σ_k m(a_k)²/a_k] + ½σ²`` over the eigenvalues a_k of A. One GD step,
``m(a) = ηa``, needs only E tr A = d v and E tr A² = d(d−1)v²/N + d(μ₄ + (N−1)v²)/N (μ₄ = E x⁴), so

    η* = τ² E trA / (τ² E trA² + σ² E trA / N),   loss* = ½ v (τ² d − η* τ² E trA) + ½ σ².

For d = N = 10, x ~ U(−½, ½), σ = 0, τ = 1: v = 1/12, μ₄ = 1/80, E trA = 5/6, E trA² = 0.1375, so
η* = 6.0606 and loss* = 0.20623, the figures von Oswald et al. report. For K steps and GD++, m is a polynomial
and the expectation is taken over a fixed Monte-Carlo sample of spectra, then minimised (L-BFGS).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lab.families.incontext import ICLFamily, ridge, ridge_name

SPECTRA = 10000  # Monte-Carlo Gram matrices for the K-step and GD++ optima


# -------------------------------------------------------------------------------------------------------
# Implied weights of each reference on one task
# -------------------------------------------------------------------------------------------------------
def gd_weights(task: dict, etas) -> jax.Array:
    """K = len(etas) GD steps from 0 on the in-context mean loss."""
    x, y = task["x"], task["y"]
    n = x.shape[0]
    a, b = x.T @ x / n, x.T @ y / n
    w = jnp.zeros(x.shape[1], x.dtype)
    for eta in etas:
        w = w - eta * (a @ w - b)
    return w


def gdpp_weights(task: dict, eta: float, gamma: float, steps: int) -> jax.Array:
    """GD++ for ``steps`` layers with shared (η, γ), token by token as a looped LSA computes it: the y-step uses
    the inputs as they were before that layer's transformation."""
    xs, r = task["x"], task["y"]
    n, d = xs.shape
    s = jnp.eye(d, dtype=xs.dtype)   # the query's transformation so far: x_q ← S x_q
    v = jnp.zeros(d, xs.dtype)       # prediction so far: ŷ = v·x_q
    for _ in range(steps):
        a = xs.T @ xs / n
        g = xs.T @ r / n
        v = v + eta * s.T @ g
        r = r - eta * xs @ g
        t = jnp.eye(d, dtype=xs.dtype) - gamma * a
        s, xs = t @ s, xs @ t        # t is symmetric
    return v


def gdpp_trace(task: dict, eta: float, gamma: float, steps: int) -> tuple[list, list]:
    """The intermediate quantities of GD++ (γ = 0: plain GD with a shared η) after each layer: the implied weights
    so far and the context residuals, the y-slots of the hand-constructed LSA."""
    xs, r = task["x"], task["y"]
    n, d = xs.shape
    s, v = jnp.eye(d, dtype=xs.dtype), jnp.zeros(d, xs.dtype)
    weights, residuals = [], []
    for _ in range(steps):
        a, g = xs.T @ xs / n, xs.T @ r / n
        v, r = v + eta * s.T @ g, r - eta * xs @ g
        t = jnp.eye(d, dtype=xs.dtype) - gamma * a
        s, xs = t @ s, xs @ t
        weights.append(v)
        residuals.append(r)
    return weights, residuals


def ls_weights(task: dict) -> jax.Array:
    return jnp.linalg.lstsq(task["x"], task["y"])[0]


def ridge_weights(task: dict, lam) -> jax.Array:
    return ridge(task["x"], task["y"], lam)


def masked_gd_weights(task: dict, mask: jax.Array, eta) -> jax.Array:
    """One GD step on least squares over the unmasked features only."""
    return eta * mask * (task["x"].T @ task["y"]) / task["x"].shape[0]


def masked_ls_weights(task: dict, mask: jax.Array) -> jax.Array:
    return jnp.linalg.lstsq(task["x"] * mask[None, :], task["y"])[0] * mask


def pool_gaussian_weights(task: dict, mean: jax.Array, cov: jax.Array, noise2: float) -> jax.Array:
    """Posterior mean under w ~ N(mean, cov), y = Xw + N(0, noise2): ``mean + C Xᵀ (X C Xᵀ + s I)⁻¹ (y − X mean)``."""
    x = task["x"]
    k = x @ cov @ x.T + noise2 * jnp.eye(x.shape[0])
    return mean + cov @ x.T @ jnp.linalg.solve(k, task["y"] - x @ mean)


# -------------------------------------------------------------------------------------------------------
# Closed forms and optima
# -------------------------------------------------------------------------------------------------------
def trace_moments(family: ICLFamily, dim: int | None = None) -> tuple[float, float]:
    """(E tr A, E tr A²) for A = XᵀX/N with i.i.d. zero-mean inputs, exactly (``dim`` features; default d)."""
    d, n, v, m4 = dim or family.dim, family.context, family.x_var, family.x_m4
    tr_a = d * v
    tr_a2 = d * (d - 1) * v**2 / n + d * (m4 + (n - 1) * v**2) / n
    return tr_a, tr_a2


def gd1_optimum(family: ICLFamily, dim: int | None = None) -> tuple[float, float]:
    """(η*, expected query loss) of one GD step from 0, in closed form (module docstring)."""
    d = dim or family.dim
    tr_a, tr_a2 = trace_moments(family, d)
    tau2, s2, n, v = family.prior**2, family.noise**2, family.context, family.x_var
    eta = tau2 * tr_a / (tau2 * tr_a2 + s2 * tr_a / n)
    loss = 0.5 * v * (tau2 * d - eta * tau2 * tr_a) + 0.5 * s2
    return float(eta), float(loss)


def gram_spectra(family: ICLFamily, dim: int | None = None, count: int = SPECTRA, seed: int = 0) -> np.ndarray:
    """Eigenvalues (count, dim) of A for a fixed Monte-Carlo sample of contexts (inputs only)."""
    return _spectra(dim or family.dim, family.context, family.inputs, family.input_scale, count, seed)


@functools.lru_cache(maxsize=32)
def _spectra(d: int, context: int, inputs: str, input_scale: float, count: int, seed: int) -> np.ndarray:
    fam = ICLFamily(dim=d, context=context, inputs=inputs, input_scale=input_scale)
    x = jax.vmap(lambda k: fam._inputs(k, (fam.context, d)))(jax.random.split(jax.random.key(seed), count))
    return np.asarray(jax.jit(jax.vmap(lambda a: jnp.linalg.eigvalsh(a.T @ a / fam.context)))(x), np.float64)


def gd_factor(a, etas):
    """m(a) of K GD steps: 1 − Π(1 − η_k a)."""
    prod = 1.0
    for eta in etas:
        prod = prod * (1 - eta * a)
    return 1 - prod


def gdpp_factor(a, eta, gamma, steps):
    """m(a) of GD++ with shared (η, γ) (the recursion of ``gdpp_weights`` on one eigen-direction)."""
    m, rho, cur = 0.0, 1.0, a
    for _ in range(steps):
        m = m + eta * rho * cur
        rho = rho * (1 - eta * cur)
        cur = cur * (1 - gamma * cur) ** 2
    return m


def spectral_loss(family: ICLFamily, m: np.ndarray, a: np.ndarray) -> float:
    """Expected query loss of ``ŵ = m(A)A⁻¹b`` from the factor ``m`` at the sampled eigenvalues ``a``."""
    v, tau2, s2, n = family.x_var, family.prior**2, family.noise**2, family.context
    per = tau2 * np.sum((1 - m) ** 2, axis=-1) + s2 / n * np.sum(m**2 / a, axis=-1)
    return float(0.5 * v * np.mean(per) + 0.5 * s2)


@functools.partial(jax.jit, static_argnames=("kind", "steps", "shared"))
def _spectral_value_and_grad(p, a, consts, kind: str, steps: int, shared: bool):
    """Value and gradient of the expected loss of ``kind`` ("gd" or "gdpp") at parameters ``p`` over spectra
    ``a``; ``consts`` = (v, τ², σ², N) as an array, so one compilation serves every family of a shape."""
    def loss(p):
        if kind == "gd":
            m = gd_factor(a, [p[0] if shared else p[i] for i in range(steps)])
        else:
            m = gdpp_factor(a, p[0], p[1], steps)
        v, tau2, s2, n = consts[0], consts[1], consts[2], consts[3]
        return 0.5 * v * jnp.mean(tau2 * jnp.sum((1 - m) ** 2, -1) + s2 / n * jnp.sum(m**2 / a, -1))
    return jax.value_and_grad(loss)(p)


def _minimise(family: ICLFamily, a: np.ndarray, x0: np.ndarray, kind: str, steps: int, shared: bool = True):
    a = jnp.asarray(a, jnp.float32)
    consts = jnp.asarray([family.x_var, family.prior**2, family.noise**2, family.context], jnp.float32)

    def fg(p):
        val, g = _spectral_value_and_grad(jnp.asarray(p, jnp.float32), a, consts, kind, steps, shared)
        return float(val), np.asarray(g, np.float64)

    return scipy.optimize.minimize(fg, x0, jac=True, method="L-BFGS-B").x


@functools.lru_cache(maxsize=32)
def gd_optimum(family: ICLFamily, steps: int, shared: bool = True, dim: int | None = None) -> tuple[tuple, float]:
    """(step sizes, expected loss) of ``steps`` GD steps: one shared η (what a looped model can do) or one per
    step; closed form for one step, else minimised over the Monte-Carlo spectra."""
    eta1, loss1 = gd1_optimum(family, dim)
    if steps == 1:
        return (eta1,), loss1
    a = gram_spectra(family, dim)
    k = 1 if shared else steps
    p = _minimise(family, a, eta1 * np.linspace(0.6, 0.4, k), "gd", steps, shared)  # unequal starts, so
    # per-step sizes can separate
    etas = tuple(float(p[min(i, k - 1)]) for i in range(steps))
    return etas, spectral_loss(family, np.asarray(gd_factor(a, etas)), a)


@functools.lru_cache(maxsize=32)
def gdpp_optimum(family: ICLFamily, steps: int) -> tuple[tuple[float, float], float]:
    """((η, γ), expected loss) of looped GD++ over ``steps`` layers, minimised over the Monte-Carlo spectra
    (started from the best shared-η GD and γ = 0, so it can only improve on plain GD)."""
    a = gram_spectra(family)
    (eta0, *_), _ = gd_optimum(family, steps, shared=True)
    best = None
    for start in ([eta0, 0.0], [2 * eta0, 1.0 / (family.dim * family.x_var)], [2 * eta0, 2.0 / (family.dim * family.x_var)]):
        p = _minimise(family, a, np.array(start), "gdpp", steps)  # a few starts: the loss is a polynomial with several minima
        loss = spectral_loss(family, np.asarray(gdpp_factor(a, p[0], p[1], steps)), a)
        if np.isfinite(loss) and (best is None or loss < best[1]):
            best = ((float(p[0]), float(p[1])), loss)
    return best


@functools.lru_cache(maxsize=16)
def best_one_step(family: ICLFamily, count: int = 20000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(c, Γ) of the learner ``ŵ = c + Γ b`` (a preconditioned GD step from a learned start, which one linear
    self-attention layer can express) with the least query error on ``family``, by least squares over ``count``
    sampled tasks (features ``x_q`` and ``x_q ⊗ b``). On the Gaussian family it recovers c = 0, Γ = η* I; on a
    pool it is the best a one-layer linear learner can do with the pool prior."""
    tasks = family.sample_batch(jax.random.key(seed), count)
    b = jnp.einsum("tnd,tn->td", tasks["x"], tasks["y"]) / family.context
    feats = np.asarray(jnp.concatenate([tasks["xq"], jnp.einsum("ti,tj->tij", tasks["xq"], b).reshape(count, -1)], 1),
                       np.float64)
    gram = feats.T @ feats / count
    theta = np.linalg.solve(gram + 1e-8 * np.trace(gram) / len(gram) * np.eye(len(gram)),
                            feats.T @ np.asarray(tasks["yq"], np.float64) / count)
    d = family.dim
    return theta[:d].astype(np.float32), theta[d:].reshape(d, d).astype(np.float32)


def ridge_loss(family: ICLFamily, lam: float) -> float:
    """Expected query loss of ridge at λ (sum convention: m(a) = Na/(Na + λ))."""
    a = gram_spectra(family)
    n = family.context
    return spectral_loss(family, n * a / (n * a + lam), a)


# -------------------------------------------------------------------------------------------------------
# The reference set of a family
# -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference learner: ``weights(task) -> ŵ``, the inner objective it pursues (a family quantity), its
    parameters, and whether it is optimal for the base within a model class (``base_aligned``)."""

    name: str
    quantity: str
    weights: Callable
    params: dict
    base_aligned: bool
    description: str


@functools.lru_cache(maxsize=64)
def reference_set(family: ICLFamily, layers: int = 1) -> dict[str, Reference]:
    """The references for models of ``layers`` layers trained on ``family``, with parameters optimal on it: GD
    with 1 and ``layers`` steps (shared η), GD++ when ``layers`` > 1, least squares, ridge at the family's λ
    grid, and the masked and pool references where the family has them. Cached: the same family gets the same
    functions, so their compilations are shared. Treat the returned dict as read-only."""
    out: dict[str, Reference] = {}
    (eta1,), _ = gd_optimum(family, 1)
    mask = family.feature_mask()
    if family.masked is None:
        out["gd1"] = Reference("gd1", "icl_ls", lambda t, e=eta1: gd_weights(t, (e,)), {"eta": eta1}, True,
                               f"one GD step, η* = {eta1:.4g}")
    else:
        # the unmasked-feature learner the base would want is GD on all features, with the step optimal for
        # the family where every feature carries signal
        full = dataclasses.replace(family, masked=None)
        (eta_full,), _ = gd_optimum(full, 1)
        out["gd1"] = Reference("gd1", "icl_ls", lambda t, e=eta_full: gd_weights(t, (e,)), {"eta": eta_full}, True,
                               f"one GD step on every feature, η* = {eta_full:.4g}")
        (eta_m,), _ = gd_optimum(family, 1, dim=family.dim - 1)
        out["gd1_masked"] = Reference("gd1_masked", "ls_masked", lambda t, e=eta_m: masked_gd_weights(t, mask, e),
                                      {"eta": eta_m}, False,
                                      f"one GD step without feature {family.masked}, η* = {eta_m:.4g}")
        out["ls_masked"] = Reference("ls_masked", "ls_masked", lambda t: masked_ls_weights(t, mask), {}, False,
                                     f"least squares without feature {family.masked}")
    if layers > 1:
        etas, _ = gd_optimum(family, layers, shared=True)
        out[f"gd{layers}"] = Reference(f"gd{layers}", "icl_ls", lambda t, e=etas: gd_weights(t, e),
                                       {"eta": etas[0]}, True, f"{layers} GD steps, shared η* = {etas[0]:.4g}")
        (eta, gamma), _ = gdpp_optimum(family, layers)
        out[f"gdpp{layers}"] = Reference(
            f"gdpp{layers}", "icl_ls", lambda t, e=eta, g=gamma, k=layers: gdpp_weights(t, e, g, k),
            {"eta": eta, "gamma": gamma}, True, f"GD++ over {layers} layers, η* = {eta:.4g}, γ* = {gamma:.4g}")
    out["ls"] = Reference("ls", "icl_ls", ls_weights, {}, True, "least squares (the in-context argmin)")
    for lam in family.ridge_lambdas():
        aligned = family.noise > 0 and abs(lam - family.bayes_lambda) < 1e-9
        out[ridge_name(lam)] = Reference(ridge_name(lam), ridge_name(lam), lambda t, lam=lam: ridge_weights(t, lam),
                                         {"lambda": lam}, aligned,
                                         f"ridge at λ = {lam:g}" + (" (Bayes-optimal, σ²/τ²)" if aligned else ""))
    if family.pool:
        pool = family.pool_weights()
        out["pool_posterior"] = Reference("pool_posterior", "pool_posterior",
                                          lambda t: family.pool_posterior_probs(t) @ pool, {}, False,
                                          f"posterior mean over the pool of {family.pool}")
        mean = jnp.mean(pool, axis=0)
        cov = jnp.cov(pool.T, bias=True).reshape(family.dim, family.dim) + 1e-3 * jnp.eye(family.dim)
        noise2 = max(family.noise, 1e-2) ** 2
        c, gamma = (jnp.asarray(a) for a in best_one_step(family))
        out["gd1_pool"] = Reference("gd1_pool", "pool_posterior",
                                    lambda t: c + gamma @ (t["x"].T @ t["y"]) / t["x"].shape[0], {}, False,
                                    "the one-step learner ŵ = c + Γ Xᵀy/N with the least query error on the pool")
        out["pool_gaussian"] = Reference("pool_gaussian", "pool_posterior",
                                         lambda t: pool_gaussian_weights(t, mean, cov, noise2), {}, False,
                                         "posterior mean under a Gaussian prior with the pool's mean and covariance")
    return out
