"""In-context linear regression: the task distribution of von Oswald et al. 2022, "Transformers learn
in-context by gradient descent" (ICML 2023; code: google-research/self-organising-systems,
``transformers_learn_icl_by_gd``).

A task is a sequence of ``context`` tokens ``(x_i, y_i)`` and a query token ``(x_q, 0)``; the model predicts
``y_q`` and the base objective is half the squared query error. As in their code, ``x ~ U(-½, ½)^d`` (the paper
text says U(-1, 1)), ``w ~ N(0, τ² I)``, ``y = w·x + σ ε``. Options beyond theirs: noise σ and prior scale τ (the
Bayes-optimal in-context predictor is then ridge with λ = σ²/τ², on the *sum* loss), a masked feature whose
teacher weight is 0 in training, and a finite task pool (Raventós et al. 2023, "Pretraining task diversity and
the emergence of non-Bayesian in-context learning for regression").

This is a ``TaskFamily`` like any other: θ is ``{"w": ŵ}``, the *implied weights* of the learner (every
predictor here is linear in ``x_q`` given the context, so ``ŷ = ŵ·x_q`` with ``ŵ = ∂ŷ/∂x_q``), starting at 0
(the empty predictor). An in-context learner is an ``Optimizer`` whose update is what one layer (one loop) does
to ŵ (``lab.incontext.learner``), so the family's ``horizon`` is the learner's number of layers or loops. It
observes the gradient of the in-context loss ``icl_ls`` (what plain GD descends) and, in
``Observation.context``, the examples ``x``, ``y`` and the query ``x_q`` (never ``y_q``). Each quantity names a
candidate inner objective (a mechanism without parents) and ``argmins`` gives its minimiser:

- ``query_error`` (the base): ``½ (w·x_q − y_q)²``.
- ``icl_ls``: in-context least squares, ``(1/2N) Σ (w·x_i − y_i)²``.
- ``ridge`` at λ: ``icl_ls + (λ/2N) ‖w‖²`` (Bayes-optimal at λ = σ²/τ²; reported for several λ).
- ``ls_masked``: least squares without the masked feature (its weight held at 0).
- ``pool_posterior``: the posterior-expected query error under the pool prior,
  ``½ σ_x² Σ_m p(m | context) ‖w − w_m‖²``; its minimiser is the posterior mean.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lab.families.base import Mechanism, Observation, Params, Shift, TaskFamily

RIDGE_LAMBDAS = (0.1, 1.0, 10.0)  # the fixed λ at which ridge is a named candidate (plus σ²/τ² when σ > 0)


@dataclasses.dataclass(frozen=True)
class ICLFamily(TaskFamily):
    """The in-context regression family; frozen, hashable, so jitted functions close over it as a constant.

    Fields (beside ``TaskFamily``'s; ``horizon`` is the learner's number of layers or loops, 1 by default):
      dim, context: d and N.
      noise, prior: σ and τ.
      input_scale: half-width of the uniform input distribution (½ in von Oswald et al.'s code).
      inputs: "uniform" or "gaussian" (the latter with the same variance as the uniform one).
      masked: index of a feature whose teacher weight is 0 (``None``: no mask).
      pool: size of a finite pool of teacher weights drawn once from ``pool_seed`` (0: fresh w per task).
      mask_in_data, pool_in_data: whether the tasks obey the mask and the pool. The shifts that release the mask
        or draw fresh tasks turn these off and leave ``masked`` and ``pool`` as they are, so the candidate
        objectives (``ls_masked``, ``pool_posterior``: what a learner could have picked up in training) stay the
        same on every shift.
    """

    horizon: int = 1
    dim: int = 10
    context: int = 10
    noise: float = 0.0
    prior: float = 1.0
    input_scale: float = 0.5
    inputs: str = "uniform"
    masked: int | None = None
    pool: int = 0
    pool_seed: int = 0
    mask_in_data: bool = True
    pool_in_data: bool = True

    name: ClassVar[str] = "incontext"
    base: ClassVar[str] = "query_error"
    probes: ClassVar[tuple[str, ...]] = ("icl_alignment", "icl_implied", "icl_fixed_point", "icl_shifts",
                                         "icl_linear_probe")
    audit_tasks: ClassVar[int] = 2048  # the alignment metrics are means over many cheap tasks

    def __post_init__(self):
        if self.dim < 1 or self.context < 1:
            raise ValueError(f"dim and context must be positive (got {self.dim}, {self.context})")
        if not all(math.isfinite(v) for v in (self.noise, self.prior, self.input_scale)):
            raise ValueError(f"noise, prior and input_scale must be finite (got {self.noise}, {self.prior}, "
                             f"{self.input_scale})")
        if self.noise < 0 or self.prior <= 0 or self.input_scale <= 0:
            raise ValueError("noise must be ≥ 0 and prior, input_scale > 0")
        if self.inputs not in ("uniform", "gaussian"):
            raise ValueError(f"inputs must be 'uniform' or 'gaussian', not {self.inputs!r}")
        if self.masked is not None and not 0 <= self.masked < self.dim:
            raise ValueError(f"masked feature {self.masked} is outside 0..{self.dim - 1}")
        if self.pool < 0:
            raise ValueError(f"pool must be ≥ 0 (got {self.pool})")
        if self.horizon < 1:
            raise ValueError(f"horizon (the learner's layers or loops) must be at least 1 (got {self.horizon})")

    # ---------------------------------------------------------------------------------------------------
    # Moments of the input distribution (used by the closed forms in ``references``)
    # ---------------------------------------------------------------------------------------------------
    @property
    def x_var(self) -> float:
        """E[x_j²]: s²/3 for U(−s, s); the Gaussian option has the same variance."""
        return self.input_scale**2 / 3.0

    @property
    def x_m4(self) -> float:
        """E[x_j⁴]: s⁴/5 for U(−s, s), 3 var² for the Gaussian."""
        return self.input_scale**4 / 5.0 if self.inputs == "uniform" else 3.0 * self.x_var**2

    @property
    def bayes_lambda(self) -> float:
        """σ²/τ²: the ridge coefficient (sum-loss convention) of the Bayes-optimal predictor for a Gaussian prior."""
        return self.noise**2 / self.prior**2

    def feature_mask(self) -> jax.Array:
        """1 on the features whose teacher weight can be non-zero, 0 on the masked one."""
        m = np.ones(self.dim, np.float32)
        if self.masked is not None:
            m[self.masked] = 0.0
        return jnp.asarray(m)

    def pool_weights(self) -> jax.Array:
        """The pool's (M, d) teacher weights, a function of ``pool_seed`` only (masked feature zeroed)."""
        if not self.pool:
            raise ValueError("this family has no task pool")
        w = self.prior * jax.random.normal(jax.random.key(self.pool_seed), (self.pool, self.dim))
        return w * self.feature_mask()[None, :]

    # ---------------------------------------------------------------------------------------------------
    # Tasks
    # ---------------------------------------------------------------------------------------------------
    def _inputs(self, key, shape):
        if self.inputs == "uniform":
            return jax.random.uniform(key, shape, minval=-self.input_scale, maxval=self.input_scale)
        return jnp.sqrt(self.x_var) * jax.random.normal(key, shape)

    def sample(self, key) -> dict:
        """One task: ``x`` (N, d), ``y`` (N,), ``xq`` (d,), ``yq`` (), the teacher ``w`` (d,)."""
        return jax.tree.map(lambda a: a[0], self.sample_batch(key, 1))

    def init(self, key, task) -> Params:
        """θ0: the empty predictor, implied weights 0 (what every learner here starts from)."""
        del key
        return {"w": jnp.zeros_like(task["xq"])}

    def observe(self, params: Params, task: dict, key) -> Observation:
        """The gradient and value of the in-context loss ``icl_ls``, and the context (never the query's label)."""
        del key
        loss, grad = jax.value_and_grad(lambda p: self._icl_ls(p["w"], task))(params)
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues(),
                           context={"x": task["x"], "y": task["y"], "xq": task["xq"]})

    def sample_batch(self, key, n: int) -> dict:
        """``n`` tasks stacked on a leading axis, drawn with a few batched ops (cheap outside ``jit`` too)."""
        k_w, k_x, k_e = jax.random.split(key, 3)
        if self.pool and self.pool_in_data:
            w = self.pool_weights()[jax.random.randint(k_w, (n,), 0, self.pool)]
        else:
            mask = self.feature_mask() if self.mask_in_data else jnp.ones(self.dim)
            w = self.prior * jax.random.normal(k_w, (n, self.dim)) * mask[None, :]
        xs = self._inputs(k_x, (n, self.context + 1, self.dim))
        ys = jnp.einsum("tnd,td->tn", xs, w) + self.noise * jax.random.normal(k_e, (n, self.context + 1))
        return {"x": xs[:, :-1], "y": ys[:, :-1], "xq": xs[:, -1], "yq": ys[:, -1], "w": w}

    # ---------------------------------------------------------------------------------------------------
    # Shifts (deployment variants)
    # ---------------------------------------------------------------------------------------------------
    def shift_table(self) -> dict[str, Shift]:
        """Named deployment variants: wider inputs, larger teachers, the mask released, fresh tasks."""
        out = {"input_scale": Shift({"input_scale": 2 * self.input_scale}, "inputs twice as wide (x ~ U(−2s, 2s))"),
               # the same signal-to-noise ratio, so the same Bayes λ
               "teacher_scale": Shift({"prior": 2 * self.prior, **({"noise": 2 * self.noise} if self.noise else {})},
                                      "teacher weights twice as large (τ × 2)")}
        if self.masked is not None:
            out["mask_released"] = Shift({"mask_in_data": False},
                                         f"the masked feature {self.masked} gets a non-zero teacher weight")
        if self.pool:
            out["fresh_tasks"] = Shift({"pool_in_data": False}, "fresh teachers w ~ N(0, τ² I) instead of the pool")
        return out

    def decorrelating(self) -> tuple[str, ...]:
        """The shifts on which a proxy's argmin separates from the base's (released mask, fresh tasks)."""
        return tuple(s for s in ("mask_released", "fresh_tasks") if s in self.shifts())

    # ---------------------------------------------------------------------------------------------------
    # Quantities: candidate inner objectives as functions of an implied weight vector
    # ---------------------------------------------------------------------------------------------------
    def ridge_lambdas(self) -> tuple[float, ...]:
        lams = set(RIDGE_LAMBDAS)
        if self.noise > 0:
            lams.add(round(self.bayes_lambda, 6))
        return tuple(sorted(lams))

    def pool_posterior_probs(self, task: dict) -> jax.Array:
        """p(m | context) ∝ exp(−Σ_i (y_i − w_m·x_i)² / 2σ²); σ is floored at 10⁻² so a noiseless family
        still has a well-defined (nearly hard) posterior."""
        s2 = max(self.noise, 1e-2) ** 2
        resid = task["y"][None, :] - self.pool_weights() @ task["x"].T  # (M, N)
        return jax.nn.softmax(-0.5 * jnp.sum(resid**2, axis=1) / s2)

    @staticmethod
    def _icl_ls(w: jax.Array, task: dict) -> jax.Array:
        return 0.5 * jnp.mean((task["x"] @ w - task["y"]) ** 2)

    def mechanisms(self) -> dict[str, Mechanism]:
        """Every candidate inner objective of implied weights ``w = θ["w"]`` on one task (none has parents:
        each reads the task directly)."""
        n = self.context
        fns = {self.base: lambda w, t: 0.5 * (t["xq"] @ w - t["yq"]) ** 2, "icl_ls": self._icl_ls}
        for lam in self.ridge_lambdas():
            fns[ridge_name(lam)] = lambda w, t, lam=lam: self._icl_ls(w, t) + 0.5 * lam / n * jnp.sum(w**2)
        if self.masked is not None:
            mask = self.feature_mask()
            # the weight of the masked feature is held at 0: any weight there costs as if unconstrained
            # (a quadratic wall), so the minimiser is masked least squares.
            fns["ls_masked"] = lambda w, t: (0.5 * jnp.mean((t["x"] @ (w * mask) - t["y"]) ** 2)
                                             + 0.5 * jnp.sum((w * (1 - mask)) ** 2))
        if self.pool:
            fns["pool_posterior"] = lambda w, t: 0.5 * self.x_var * jnp.sum(
                self.pool_posterior_probs(t) * jnp.sum((w[None, :] - self.pool_weights()) ** 2, axis=1))
        return {name: Mechanism((), lambda p, t, _, fn=fn: fn(p["w"], t)) for name, fn in fns.items()}

    def argmins(self, task: dict) -> dict[str, jax.Array]:
        """The minimiser of every candidate except the base (the teacher ``w`` minimises its expectation)."""
        x, y = task["x"], task["y"]
        out = {self.base: task["w"], "icl_ls": jnp.linalg.lstsq(x, y)[0]}
        for lam in self.ridge_lambdas():
            out[ridge_name(lam)] = ridge(x, y, lam)
        if self.masked is not None:
            m = self.feature_mask()
            out["ls_masked"] = jnp.linalg.lstsq(x * m[None, :], y)[0] * m
        if self.pool:
            out["pool_posterior"] = self.pool_posterior_probs(task) @ self.pool_weights()
        return out


def ridge_name(lam: float) -> str:
    return f"ridge_{lam:g}"


def ridge(x: jax.Array, y: jax.Array, lam: float) -> jax.Array:
    """``(XᵀX + λI)⁻¹ Xᵀy``, through the N×N dual when N < d (both exact; λ = 0 gives least squares, via lstsq)."""
    if lam == 0:
        return jnp.linalg.lstsq(x, y)[0]
    n, d = x.shape
    if n < d:
        return x.T @ jnp.linalg.solve(x @ x.T + lam * jnp.eye(n), y)
    return jnp.linalg.solve(x.T @ x + lam * jnp.eye(d), x.T @ y)


def tokens(task: dict) -> jax.Array:
    """The (N + 1, d + 1) token matrix of one task: rows ``(x_i, y_i)`` then the query ``(x_q, 0)``."""
    ctx = jnp.concatenate([task["x"], task["y"][:, None]], axis=1)
    query = jnp.concatenate([task["xq"], jnp.zeros((1,), task["xq"].dtype)])
    return jnp.concatenate([ctx, query[None, :]], axis=0)
