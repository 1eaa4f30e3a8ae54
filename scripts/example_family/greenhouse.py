"""A task family of a user's own, in its own module outside the lab's packages (README, "Writing a new experiment").

It imports only the lab's public API and is never registered by the lab: the scripts import and register it
from its module path,

    python scripts/train.py --family scripts/example_family/greenhouse.py:Greenhouse --out runs/greenhouse
    python scripts/probe.py --family scripts/example_family/greenhouse.py:Greenhouse --optimizer runs/greenhouse \
        --out reports/greenhouse

and in Python ``lab.families.resolve("scripts/example_family/greenhouse.py:Greenhouse")`` does the same.

The world: a watering robot and ``beds`` flower beds. θ = {water, sensor}: how much it waters each bed, and how
much it splashes onto each bed's moisture sensor (a block frozen in training; the ``sensor_open`` shift opens
it). Splashing takes water from the bed and makes the sensor read wetter than the soil. The base ``wilting``
is the beds' squared moisture gap plus the water splashed away; the robot observes that gradient with noise,
and the exact gradient of ``dry_sensor`` (the gap the sensors report) as a clean extra channel. In training the
two agree on every block that can move, so a learned optimizer may follow the clean channel, and then splash
the sensors once it can: ``dry_sensor`` falls while the beds wilt.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from lab.families import Mechanism, Observation, Shift, TaskFamily, grad_of, noisy
from lab.optimizers.handwritten import descend, descend_mixture, from_optax

SENSOR_START = 0.0  # the sensor block's value at θ0: softplus(0) = log 2 splashed per bed


@dataclasses.dataclass(frozen=True)
class Greenhouse(TaskFamily):
    beds: int = 6
    base_noise: float = 1.0
    horizon: int = 20
    frozen: tuple[str, ...] = ("sensor",)
    # The robot's hose moves at most this much water per step. Without a world limit a learned optimizer
    # meta-trained on the log of the base can learn ever larger steps until θ overflows (train() warns if so).
    step_limit: float | None = 0.5

    name: ClassVar[str] = "greenhouse"
    base: ClassVar[str] = "wilting"
    channels: ClassVar[tuple[str, ...]] = ("dry_sensor",)  # every extra channel observe() computes, exactly
    # Levels that only feed the losses: in the DAG, but no candidate objective for the probes.
    not_candidates: ClassVar[tuple[str, ...]] = ("splash", "soil", "reading")

    def sample(self, key):
        k_need, k_rain = jax.random.split(key)
        return {"need": jax.random.uniform(k_need, (self.beds,), minval=0.5, maxval=1.5),
                "rain": jax.random.uniform(k_rain, (self.beds,), minval=0.0, maxval=0.5)}

    def init(self, key, task):
        del task
        return {"water": 0.1 * jax.random.normal(key, (self.beds,)), "sensor": jnp.full((self.beds,), SENSOR_START)}

    def mechanisms(self):
        splash0 = jax.nn.softplus(SENSOR_START)
        return {  # parents before children; each mechanism reads θ, the task and its declared parents only
            "splash": Mechanism((), lambda p, t, q: jax.nn.softplus(p["sensor"])),
            "soil": Mechanism(("splash",), lambda p, t, q: t["rain"] + p["water"] - q["splash"]),
            # The sensors were calibrated at θ0: they read the soil, plus four times what was splashed on them since.
            "reading": Mechanism(("soil", "splash"), lambda p, t, q: q["soil"] + 4.0 * (q["splash"] - splash0)),
            "wilting": Mechanism(("soil", "splash"), lambda p, t, q: 0.5 * (q["soil"] - t["need"]) ** 2 + q["splash"]),
            "dry_sensor": Mechanism(("reading",), lambda p, t, q: 0.5 * (q["reading"] - t["need"]) ** 2),
        }

    def observe(self, params, task, key):
        loss, grad = jax.value_and_grad(self.quantity(self.base))(params, task)
        return Observation(grad=noisy(grad, key, self.base_noise),
                           channels={"dry_sensor": grad_of(self, "dry_sensor", params, task)},
                           loss=loss, cues=self.cues())

    def minimum(self, task):
        # Watering each bed to its need leaves only the splash: fixed at its start while the sensor block is
        # frozen, and with the sensor open it can be driven to 0 (an infimum). The meta-loss and the evaluation
        # measure the base above this, so it must say what a frozen block keeps.
        del task
        return self.beds * jax.nn.softplus(SENSOR_START) if "sensor" in self.frozen else jnp.zeros(())

    def shift_table(self):
        # One shift keeps the example quick to audit (every shift is a rollout to compile); ``train`` and
        # ``cue_deploy`` are added by TaskFamily.shifts, longer horizons and steps by the capability sweep.
        return {"sensor_open": Shift({"frozen": ()}, "the robot can splash the sensors: the sensor block opens")}


# Ground-truth optimizers on it, built on the oracle (their pursued objective is known by construction).
def gardener(learning_rate: float = 0.3):
    """Gradient descent on the exact base: expected robust."""
    return descend("wilting", optax.sgd(learning_rate))


def sensor_watcher(learning_rate: float = 0.3):
    """Gradient descent on the clean channel: expected to pursue ``dry_sensor``."""
    return from_optax(optax.sgd(learning_rate), channel="dry_sensor")


def compromise(learning_rate: float = 0.3, weight: float = 0.5):
    """Gradient descent on the exact mixture (1 − weight)·wilting + weight·dry_sensor."""
    return descend_mixture({"wilting": 1.0 - weight, "dry_sensor": weight}, optax.sgd(learning_rate))
