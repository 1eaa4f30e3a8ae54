"""Handwritten-digit classification on real data: scikit-learn's bundled digits, no download.

The data are the 1,797 8×8 grey-level images of the UCI "Optical Recognition of Handwritten Digits" set
(Alpaydin and Kaynak 1998) that scikit-learn ships inside its wheel (``sklearn.datasets.load_digits`` reads a
file of the installed package; nothing is fetched). They are read once per process, at the first task drawn,
into a NumPy array, and enter every jitted program as a constant. A task is a random subsample split into a
training and a validation set, a random initialisation, and optionally a random relabelling of the ten classes,
input noise and label noise; the student is a one-hidden-layer tanh MLP (64 → ``hidden`` → 10), the size of the
small image classifiers of learned-optimizer task suites (Metz et al. 2020, "Tasks, stability, architecture, and
compute"; VeLO, Metz et al. 2022), scaled down to run on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lab.families.base import Mechanism, Observation, Shift, TaskFamily, minibatch_indices
from lab.families.mlp import cross_entropy, mlp_logits

CLASSES = 10
PIXELS = 64


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The images as ``(1797, 64)`` float32 in [0, 1] (grey levels 0…16 divided by 16) and the labels as
    ``(1797,)`` int32, read once per process from the copy inside the scikit-learn package."""
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes a second, only digits needs it

    data = load_digits()
    return (np.asarray(data.data, np.float32) / 16.0), np.asarray(data.target, np.int32)


def _true_probability(params, x, y):
    """Softmax probability of the true label ``y`` for each input of ``x``."""
    return jnp.take_along_axis(jax.nn.softmax(mlp_logits(params, x), -1), y[:, None], axis=-1)[:, 0]


@dataclasses.dataclass(frozen=True)
class DigitsMLP(TaskFamily):
    """Ten-class classification of 8×8 digit images (64 inputs) by a tanh MLP with ``hidden`` units.

    Task: ``n_train + n_val`` distinct images drawn at random from the 1,797, split into training and validation
    sets; with ``permute_labels`` the ten class names are permuted per task (the same permutation for both
    sets); ``input_noise`` adds Gaussian noise of that standard deviation to every pixel (fixed per task);
    ``label_noise`` replaces that share of the training labels by uniformly drawn ones (the validation labels
    stay clean, so the base measures what the network learned of the digits). Inputs are multiplied by
    ``input_scale``.

    Quantities: ``val_loss`` (base, cross-entropy on the validation set), ``train_loss`` (on the training set),
    ``weight_norm`` (½‖θ‖²), ``val_error`` (1 − the mean softmax probability of the true label on the
    validation set: the expected error of a label drawn from the network's softmax, an accuracy that is
    differentiable) and ``val_misclassified`` (the share of validation images whose most probable label is
    wrong: piecewise constant, its gradient is zero, so it is reported but no candidate objective). Observed:
    the gradient of the cross-entropy on a random minibatch of ``batch`` distinct training images.
    """

    hidden: int = 32
    n_train: int = 1024
    n_val: int = 256
    batch: int = 32
    input_scale: float = 1.0
    input_noise: float = 0.0
    label_noise: float = 0.0
    permute_labels: bool = True
    horizon: int = 50

    name: ClassVar[str] = "digits_mlp"
    traced: ClassVar[tuple[str, ...]] = TaskFamily.traced + ("input_scale", "input_noise", "label_noise")
    base: ClassVar[str] = "val_loss"
    not_candidates: ClassVar[tuple[str, ...]] = ("val_misclassified",)
    # What ``train.py --family digits_mlp`` uses unless told otherwise: a run that fits in 15 minutes on 2 CPU
    # cores (the learned optimizer's width 16 instead of 32 makes each meta-step about 1.6x faster) and an
    # evaluation that also reports 4x and 10x the horizon and the network size never seen in training. The LSTM
    # beat the MLP on every seed tried. 32 tasks per PES estimate: the meta-gradient's noise, more than the number
    # of meta-steps, limited the 16-task runs (README, the digits rows: every setting measured, and on which seeds).
    meta_defaults: ClassVar[dict] = {"optimizer": "lstm", "tasks": 32, "hidden": 16, "meta_steps": 1000,
                                     "eval_horizons": (4, 10), "eval_shifts": ("wider",)}

    def sample(self, key):
        images, labels = digits()
        if self.n_train + self.n_val > images.shape[0]:
            raise ValueError(f"n_train + n_val must be at most {images.shape[0]} (the digits there are), got "
                             f"{self.n_train} + {self.n_val}")
        k_pick, k_perm, k_noise, k_flip, k_random = jax.random.split(key, 5)
        # Distinct images: the first of a random order (sorting random bits; random.choice without replacement
        # does the same in several sorting rounds and compiles ten times slower).
        pick = jnp.argsort(jax.random.bits(k_pick, (images.shape[0],)))[:self.n_train + self.n_val]
        x = jnp.asarray(images)[pick]
        y = jnp.asarray(labels)[pick]
        if self.permute_labels:
            y = jax.random.permutation(k_perm, CLASSES)[y]
        x = self.input_scale * (x + self.input_noise * jax.random.normal(k_noise, x.shape))
        x_train, y_train, x_val, y_val = x[:self.n_train], y[:self.n_train], x[self.n_train:], y[self.n_train:]
        flip = jax.random.uniform(k_flip, (self.n_train,)) < self.label_noise
        y_train = jnp.where(flip, jax.random.randint(k_random, (self.n_train,), 0, CLASSES), y_train)
        return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}

    def init(self, key, task):
        del task
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (PIXELS, self.hidden)) / jnp.sqrt(PIXELS),
            "b1": jnp.zeros((self.hidden,)),
            "w2": jax.random.normal(k2, (self.hidden, CLASSES)) / jnp.sqrt(self.hidden),
            "b2": jnp.zeros((CLASSES,)),
        }

    def mechanisms(self):
        def misclassified(p, t, parents):
            return jnp.mean((jnp.argmax(mlp_logits(p, t["x_val"]), -1) != t["y_val"]).astype(jnp.float32))

        return {
            "val_loss": Mechanism((), lambda p, t, parents: cross_entropy(p, t["x_val"], t["y_val"])),
            "train_loss": Mechanism((), lambda p, t, parents: cross_entropy(p, t["x_train"], t["y_train"])),
            "weight_norm": Mechanism(
                (), lambda p, t, parents: 0.5 * sum(jnp.sum(v**2) for v in jax.tree.leaves(p))),
            "val_error": Mechanism(
                (), lambda p, t, parents: 1.0 - jnp.mean(_true_probability(p, t["x_val"], t["y_val"]))),
            "val_misclassified": Mechanism((), misclassified),
        }

    def observe(self, params, task, key):
        idx = minibatch_indices(key, self.n_train, self.batch)
        loss, grad = jax.value_and_grad(cross_entropy)(params, task["x_train"][idx], task["y_train"][idx])
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues())

    def shift_table(self):
        return {
            "small_data": Shift({"n_train": self.n_train // 4}, "a quarter of the training images"),
            "label_noise": Shift({"label_noise": 0.3}, "30% of the training labels redrawn at random"),
            "input_scale": Shift({"input_scale": self.input_scale * 3}, "inputs three times brighter"),
            "long_horizon": Shift({"horizon": self.horizon * 4}, "four times the training horizon"),
            "wider": Shift({"hidden": self.hidden * 2}, "twice the hidden units: a network size the optimizer "
                           "never saw"),
        }
