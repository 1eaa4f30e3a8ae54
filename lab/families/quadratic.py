"""Random ill-conditioned quadratics with the exact gradient of the base observed: the control family."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lab.families.base import Mechanism, Observation, Shift, TaskFamily


@dataclasses.dataclass(frozen=True)
class Quadratic(TaskFamily):
    """``loss(x) = ½ (x − x*)ᵀ A (x − x*)`` with ``A = Qᵀ diag(λ) Q``, λ log-uniform in
    ``[scale / condition, scale]`` and Q a random rotation; x* and x0 are standard normal.

    The candidate beside the base is ``norm`` (½‖x‖², a pull to the origin). A candidate with the base's argmin
    on every task (such as ½‖x − x*‖²) is left out on purpose: no shift of this family could tell an optimizer
    pursuing it from one pursuing the base, so it would only make inverse optimisation unidentifiable. The
    minimum of the base is 0 at x*.
    """

    dim: int = 8
    condition: float = 100.0
    scale: float = 1.0
    horizon: int = 50

    name: ClassVar[str] = "quadratic"
    base: ClassVar[str] = "loss"
    traced: ClassVar[tuple[str, ...]] = TaskFamily.traced + ("condition", "scale")

    def sample(self, key):
        k_eig, k_rot, k_opt = jax.random.split(key, 3)
        log_eig = jax.random.uniform(k_eig, (self.dim,), minval=-jnp.log(self.condition), maxval=0.0)
        q, _ = jnp.linalg.qr(jax.random.normal(k_rot, (self.dim, self.dim)))
        a = self.scale * (q.T * jnp.exp(log_eig)[None, :]) @ q
        return {"A": 0.5 * (a + a.T), "x_star": jax.random.normal(k_opt, (self.dim,))}

    def init(self, key, task):
        del task
        return {"x": jax.random.normal(key, (self.dim,))}

    def mechanisms(self):
        def loss(p, task, parents):
            r = p["x"] - task["x_star"]
            return 0.5 * r @ task["A"] @ r

        return {
            "loss": Mechanism((), loss),
            "norm": Mechanism((), lambda p, task, parents: 0.5 * jnp.sum(p["x"] ** 2)),
        }

    def observe(self, params, task, key):
        del key
        loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues())

    def minimum(self, task):
        return jnp.zeros(())

    def argmin(self, task):
        """The minimiser x* of the base (closed form)."""
        return {"x": task["x_star"]}

    def shift_table(self):
        return {
            "ill_conditioned": Shift({"condition": self.condition * 10}, "ten times the condition number"),
            "scaled": Shift({"scale": self.scale * 10}, "curvature ten times larger"),
            "long_horizon": Shift({"horizon": self.horizon * 4}, "four times the training horizon"),
        }
