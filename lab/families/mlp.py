"""Small MLP classification on data generated in code: the realistic benchmark family.

Each task draws a random teacher network that labels Gaussian inputs; the student is a one-hidden-layer MLP
trained on a small training set, scored on a held-out validation set. No data is downloaded.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from lab.families.base import Mechanism, Observation, Shift, TaskFamily, minibatch_indices


def mlp_logits(params, x):
    """Logits of the one-hidden-layer tanh MLP ``params`` = {w1, b1, w2, b2} on inputs ``x`` (n, in)."""
    return jnp.tanh(x @ params["w1"] + params["b1"][None, :]) @ params["w2"] + params["b2"][None, :]


def cross_entropy(params, x, y):
    """Mean softmax cross-entropy of ``mlp_logits`` against integer labels ``y``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, x), y))


@dataclasses.dataclass(frozen=True)
class MLPClassification(TaskFamily):
    """Teacher-labelled classification with ``classes`` classes of ``in_dim``-dimensional Gaussian inputs.

    Quantities: ``val_loss`` (base, cross-entropy on ``n_val`` held-out samples), ``train_loss`` (on the
    ``n_train`` training samples) and ``weight_norm`` (½‖θ‖²). Observed: the gradient of the cross-entropy on
    a random minibatch of ``batch`` distinct training samples.
    """

    in_dim: int = 8
    hidden: int = 16
    classes: int = 4
    n_train: int = 128
    n_val: int = 256
    batch: int = 32
    input_scale: float = 1.0
    horizon: int = 100

    name: ClassVar[str] = "mlp"
    traced: ClassVar[tuple[str, ...]] = TaskFamily.traced + ("input_scale",)
    base: ClassVar[str] = "val_loss"

    def _network(self, key, scale=1.0):
        k1, k2 = jax.random.split(key)
        return {
            "w1": scale * jax.random.normal(k1, (self.in_dim, self.hidden)) / jnp.sqrt(self.in_dim),
            "b1": jnp.zeros((self.hidden,)),
            "w2": scale * jax.random.normal(k2, (self.hidden, self.classes)) / jnp.sqrt(self.hidden),
            "b2": jnp.zeros((self.classes,)),
        }

    def sample(self, key):
        k_teacher, k_train, k_val = jax.random.split(key, 3)
        teacher = self._network(k_teacher, scale=2.0)
        x_train = self.input_scale * jax.random.normal(k_train, (self.n_train, self.in_dim))
        x_val = self.input_scale * jax.random.normal(k_val, (self.n_val, self.in_dim))
        return {
            "x_train": x_train, "y_train": jnp.argmax(mlp_logits(teacher, x_train), -1),
            "x_val": x_val, "y_val": jnp.argmax(mlp_logits(teacher, x_val), -1),
        }

    def init(self, key, task):
        del task
        return self._network(key)

    def mechanisms(self):
        return {
            "val_loss": Mechanism((), lambda p, t, parents: cross_entropy(p, t["x_val"], t["y_val"])),
            "train_loss": Mechanism((), lambda p, t, parents: cross_entropy(p, t["x_train"], t["y_train"])),
            "weight_norm": Mechanism(
                (), lambda p, t, parents: 0.5 * sum(jnp.sum(v**2) for v in jax.tree.leaves(p))),
        }

    def observe(self, params, task, key):
        idx = minibatch_indices(key, self.n_train, self.batch)
        loss, grad = jax.value_and_grad(cross_entropy)(params, task["x_train"][idx], task["y_train"][idx])
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues())

    def shift_table(self):
        return {
            "input_scale": Shift({"input_scale": self.input_scale * 3}, "inputs three times larger"),
            "small_data": Shift({"n_train": self.n_train // 4}, "a quarter of the training samples"),
            "long_horizon": Shift({"horizon": self.horizon * 4}, "four times the training horizon"),
        }
