"""Linear regression from a few noisy samples: the base is the population loss, the optimizer observes
minibatch gradients of the training loss. A meta-trained optimizer here can learn implicit regularisation;
the Bayes-optimal estimator for the task prior is ridge regression, available in closed form."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lab.families.base import Mechanism, Observation, Shift, TaskFamily, minibatch_indices


@dataclasses.dataclass(frozen=True)
class Regression(TaskFamily):
    """Tasks: ``w* ~ N(0, prior² I)``, inputs ``x ~ N(0, input_scale² I)``, ``y = w*·x + noise·ε``, with
    ``n_train`` training samples per task. θ = {"w"} starts at zero.

    Quantities: ``val_loss`` (base): the population loss ``½(input_scale²‖w − w*‖² + noise²)``, exact;
    ``train_loss``: ``(1/2n)‖Xw − y‖²``; ``weight_norm``: ``½‖w‖²``. Observed: the gradient of the training loss
    on a random minibatch of ``batch`` samples, and that minibatch's loss.
    """

    dim: int = 8
    n_train: int = 16
    batch: int = 4
    noise: float = 0.5
    prior: float = 1.0
    input_scale: float = 1.0
    horizon: int = 50

    name: ClassVar[str] = "regression"
    traced: ClassVar[tuple[str, ...]] = TaskFamily.traced + ("noise", "prior", "input_scale")
    base: ClassVar[str] = "val_loss"

    def sample(self, key):
        k_w, k_x, k_e = jax.random.split(key, 3)
        w_star = self.prior * jax.random.normal(k_w, (self.dim,))
        x = self.input_scale * jax.random.normal(k_x, (self.n_train, self.dim))
        y = x @ w_star + self.noise * jax.random.normal(k_e, (self.n_train,))
        return {"X": x, "y": y, "w_star": w_star}

    def init(self, key, task):
        del key, task
        return {"w": jnp.zeros((self.dim,))}

    def mechanisms(self):
        def val_loss(p, task, parents):
            return 0.5 * (self.input_scale**2 * jnp.sum((p["w"] - task["w_star"]) ** 2) + self.noise**2)

        def train_loss(p, task, parents):
            return 0.5 * jnp.mean((task["X"] @ p["w"] - task["y"]) ** 2)

        return {
            "val_loss": Mechanism((), val_loss),
            "train_loss": Mechanism((), train_loss),
            "weight_norm": Mechanism((), lambda p, task, parents: 0.5 * jnp.sum(p["w"] ** 2)),
        }

    def observe(self, params, task, key):
        idx = minibatch_indices(key, self.n_train, self.batch)
        batch = {"X": task["X"][idx], "y": task["y"][idx]}

        def minibatch_loss(p):
            return 0.5 * jnp.mean((batch["X"] @ p["w"] - batch["y"]) ** 2)

        loss, grad = jax.value_and_grad(minibatch_loss)(params)
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues())

    def minimum(self, task):
        del task
        return jnp.asarray(0.5 * self.noise**2)

    def ridge_solution(self, task, lam):
        """argmin of ``train_loss + lam · weight_norm``: ``(XᵀX/n + lam I)⁻¹ Xᵀy/n``."""
        n = self.n_train
        gram = task["X"].T @ task["X"] / n + lam * jnp.eye(self.dim)
        return {"w": jnp.linalg.solve(gram, task["X"].T @ task["y"] / n)}

    def bayes_ridge_lambda(self) -> float:
        """The ridge coefficient whose solution is the posterior mean under the task prior:
        ``noise² / (prior² n_train)`` in the scaling of ``ridge_solution`` (Bishop 2006, eq. 3.55)."""
        return self.noise**2 / (self.prior**2 * self.n_train)

    def shift_table(self):
        return {
            "noisier": Shift({"noise": self.noise * 3}, "three times the label noise"),
            "input_scale": Shift({"input_scale": self.input_scale * 3}, "inputs three times larger"),
            "long_horizon": Shift({"horizon": self.horizon * 4}, "four times the training horizon"),
        }
