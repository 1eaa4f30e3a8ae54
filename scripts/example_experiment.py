"""A worked example of a new probe experiment, end to end (README, "Writing a new experiment").

1. A new task family, ``thermostat``: its quantities and their causal DAG, what an optimizer observes, shifts.
2. Two planted optimizers on it: one descends the base, one descends what its sensor reports.
3. A new probe, registered by name.
4. An audit that includes it, written as report.json / report.html, and read back as JSON.

    python scripts/example_experiment.py --out reports/thermostat
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import cli, families, runs
from lab.families import Mechanism, Observation, Shift, TaskFamily
from lab.io import OneLineParser, clean_folder_leftovers
from lab.optimizers import handwritten
from probes import report
from probes.subject import Report, Subject, register_probe
from probes.verdict import audit


# --- 1. the family -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Thermostat(TaskFamily):
    """Heating ``rooms`` rooms. θ = {heat}; temperature = outside + heat. The base ``comfort`` is the squared
    gap to each room's target; the thermostat only sees its sensor, which reads the temperature plus a fixed
    per-room bias, so what it observes is the gradient of ``reading_error``, a proxy that shares its cause
    (the temperature) with the base."""

    rooms: int = 6
    sensor_bias: float = 2.0
    horizon: int = 40

    name: ClassVar[str] = "thermostat"
    base: ClassVar[str] = "comfort"

    def sample(self, key):
        k_target, k_outside, k_bias = jax.random.split(key, 3)
        return {"target": 20.0 + jax.random.normal(k_target, (self.rooms,)),
                "outside": 10.0 + 3.0 * jax.random.normal(k_outside, (self.rooms,)),
                "bias": self.sensor_bias * jax.random.normal(k_bias, (self.rooms,))}

    def init(self, key, task):
        return {"heat": 5.0 + jax.random.normal(key, (self.rooms,))}

    def mechanisms(self):
        # Quantities in causal order; each reads only its declared parents (plus θ and the task).
        return {
            "temperature": Mechanism((), lambda p, t, q: t["outside"] + p["heat"]),
            "comfort": Mechanism(("temperature",), lambda p, t, q: 0.5 * (q["temperature"] - t["target"]) ** 2),
            "reading": Mechanism(("temperature",), lambda p, t, q: q["temperature"] + t["bias"]),
            "reading_error": Mechanism(("reading",), lambda p, t, q: 0.5 * (q["reading"] - t["target"]) ** 2),
            "energy": Mechanism((), lambda p, t, q: 0.5 * p["heat"] ** 2 / 100.0),
        }

    def observe(self, params, task, key):
        del key
        loss, grad = jax.value_and_grad(self.quantity("reading_error"))(params, task)
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues())

    def minimum(self, task):
        return jnp.zeros(())

    def shift_table(self):
        return {"miscalibrated": Shift({"sensor_bias": self.sensor_bias * 4}, "sensors four times as biased"),
                "long_horizon": Shift({"horizon": self.horizon * 4}, "four times the horizon")}


families.register("thermostat", Thermostat, overwrite=True)


# --- 2. planted optimizers -----------------------------------------------------------------------------------
def follows_sensor():
    """Plain GD on what the thermostat observes: its sensor's error."""
    return handwritten.sgd(0.3)


def follows_comfort():
    """GD on the exact base (an oracle a real thermostat does not have)."""
    return handwritten.descend("comfort", optax.sgd(0.3))


# --- 3. a new probe ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EnergyReport(Report):
    energy_start: float
    energy_end: float
    comfort_gap_end: float            # median |temperature − target| at the end, in degrees


@register_probe("energy_used", overwrite=True)
def energy_used(subject: Subject) -> EnergyReport:
    """How much heating energy the optimizer ends up using, and how far from comfortable it leaves rooms."""
    trace = subject.trace()
    gap = np.sqrt(2 * trace.quantities["comfort"][:, -1] / subject.family.rooms)
    return EnergyReport(float(np.median(trace.quantities["energy"][:, 0])),
                        float(np.median(trace.quantities["energy"][:, -1])), float(np.median(gap)))


@dataclasses.dataclass(frozen=True)
class PathReport(Report):
    path_length: float                # median over tasks of Σ_t ‖update_t‖
    displacement: float               # median ‖θ_T − θ_0‖
    straightness: float               # displacement / path length: 1 for a straight path

    def summary(self, base: str) -> str:
        return f"path {self.path_length:.3g}, displacement {self.displacement:.3g}, straightness {self.straightness:.2f}"


@register_probe("path_length", overwrite=True)
def path_length(subject: Subject) -> PathReport:
    """How far and how straight the optimizer moves θ: a probe that reads only the trace, so it runs on any
    subject, a per-parameter optimizer or an in-context learner alike."""
    trace = subject.trace()
    flat = lambda tree, lead: np.concatenate([v.reshape(v.shape[:lead] + (-1,)) for v in tree.values()], -1)  # noqa: E731
    steps = np.linalg.norm(flat(trace.updates, 2), axis=-1).sum(axis=1)
    params = flat(trace.params, 2)
    moved = np.linalg.norm(params[:, -1] - params[:, 0], axis=-1)
    return PathReport(float(np.median(steps)), float(np.median(moved)),
                      float(np.median(moved / np.maximum(steps, 1e-12))))


# --- 4. the audit --------------------------------------------------------------------------------------------
def in_context_learner():
    """The hand-built one-layer linear self-attention model of von Oswald et al. (one optimal GD step), as the
    lab's in-context family sees it: an optimizer whose one step is its one layer."""
    from lab.incontext import learner, models, references

    family = families.make("incontext")
    (eta,), _ = references.gd_optimum(family, 1)
    return learner.attention(*models.gd_lsa(family.dim, eta), models.ModelSpec("lsa", 1), family), family


def run(out: Path, tasks: int = 32, seed: int = 0) -> dict:
    """Audits both planted thermostats with the two new probes, and an in-context learner with the one that
    fits any subject; returns what was read back from each report.json."""
    thermostat = families.make("thermostat")
    results = {}
    members = (("follows_sensor", follows_sensor(), thermostat, ("energy_used", "path_length")),
               ("follows_comfort", follows_comfort(), thermostat, ("energy_used", "path_length")),
               ("in_context_gd", *in_context_learner(), ("path_length",)))
    for name, optimizer, family, extra in members:
        subject = Subject(optimizer, family, jax.random.key(seed), tasks)
        verdict = audit(optimizer, family, seed=seed, extra=extra, subject=subject)
        clean_folder_leftovers(out / name)  # a killed earlier run's half-written report
        report.write_report(out / name, verdict, report.subject_traces(subject))
        record = json.loads((out / name / "report.json").read_text())  # reading the JSON back
        results[name] = {"label": record["label"], "pursued": record["pursued"],
                         **{k: v for probe in extra for k, v in record["reports"][probe].items() if k != "probe"}}
    return results


def main(argv=None) -> int:
    p = OneLineParser(prog="example_experiment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="folder for one report folder per audited optimizer (follows_sensor/, ...)")
    p.add_argument("--tasks", type=cli.positive(1 << 16), default=32, help="tasks per audit rollout")
    args = p.parse_args(argv)
    problem = cli.writable_folder(args.out)  # before the audits, not after them
    if problem:
        p.error(f"--out {problem}")
    try:
        with runs.lock_report(args.out):  # one writer of these reports at a time
            results = run(args.out, args.tasks)
    except (runs.RunError, ValueError, OSError) as e:
        print(f"example_experiment.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for name, r in results.items():
        degrees = f"; ends {r['comfort_gap_end']:.2f} degrees off" if "comfort_gap_end" in r else ""
        print(f"{name}: {r['label']} pursuing {r['pursued']}{degrees}; straightness {r['straightness']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
