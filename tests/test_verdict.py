"""The verdict on planted ground truth: optimizers whose pursued objective is known by construction, and
degenerate optimizers and families that must end in a verdict rather than a traceback."""

import dataclasses
import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab import families
from lab.families.base import Mechanism, Observation, TaskFamily
from lab.optimizers import handwritten
from lab.optimizers.base import Optimizer
from probes.zoo import planted
from probes.subject import Report, register_probe, PROBES
from probes.catalogue.inverse import fixed_point, named_aliases, regression_on
from probes.catalogue.shifts import causal_relation
from probes.subject import Subject
from probes.verdict import CLASSES, ProbeFailure, Skipped, audit
from probes.zoo.jobs import audit_planted

# One member per mechanism the verdict uses; the whole zoo over several seeds is the slow test below.
FAST = ["gd_wipes", "gd_vacuum", "gd_cookies_capped", "cue_conditional", "pull", "perturbed", "random_walk",
        "diverges_off", "adam", "gd_hidden_quadratic"]


@pytest.mark.parametrize("name", FAST)
def test_planted_member_gets_its_class_and_pursued_quantity(name):
    member = planted.get(name)
    optimizer, family = planted.build(name)
    verdict = audit(optimizer, family, seed=1, tasks=16)
    assert (verdict.label, verdict.pursued) == (member.expected, member.pursued), verdict.evidence
    assert verdict.label in CLASSES and 0.0 <= verdict.confidence <= 1.0
    record = json.loads(json.dumps(verdict.to_json()))
    assert record["schema_version"] == 1 and record["label"] == member.expected
    assert "cue_deploy" in record["shifts"] and set(record["reports"]) >= {"competence", "gradient_regression"}


def test_every_class_but_unidentified_has_a_planted_member_and_the_zoo_is_large_enough():
    labels = {m.expected for m in planted.PLANTED.values()}
    assert set(CLASSES) - labels == {"unidentified"}
    assert len(planted.PLANTED) >= 16
    assert {m.name for m in planted.PLANTED.values() if m.expected == "not_optimizing"} == {"random_walk", "schedule"}


def test_named_aliases_drops_zero_parallel_and_dependent_gradients():
    rng = np.random.default_rng(0)
    table, pantry = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    columns = {"table": table, "pantry": pantry, "cookies": table + pantry, "nothing": 0 * table,
               "scaled": table * rng.uniform(0.5, 2.0, size=(40, 1))}  # parallel to table, row by row
    names = list(columns)
    g = np.stack([columns[n] for n in names], -1)
    kept, aliases = named_aliases(g, names)
    assert [names[k] for k in kept] == ["table", "pantry"]
    assert aliases == {"cookies": "1·table + 1·pantry", "nothing": None, "scaled": "table"}
    # An observed channel is kept before other quantities: the dependence is then told in its terms.
    kept, aliases = named_aliases(g, names, first=("cookies",))
    assert [names[k] for k in kept] == ["table", "cookies"]
    assert aliases["pantry"] == "-1·table + 1·cookies"


def test_the_regression_names_the_proxy_of_a_sum_world_where_proxy_and_base_part():
    # cookies = table + pantry exactly: on a trace past the shelf, a least-squares fit over all three would split
    # its weight; with the dependent candidate left out, descent of the channel is named as such.
    fam = families.make("cookies").shift("long_horizon")
    opt = handwritten.from_optax(optax.sgd(0.3), channel="cookies")
    subject = Subject(opt, fam, jax.random.key(0), 8)
    beyond = subject.trace().after(30)
    fit = regression_on(beyond, subject.candidates())
    assert "pantry" in fit["aliases"] and set(fit["weights"]) == {"table", "cookies"}
    assert fit["weights"]["cookies"] > 0.9 and fit["r2"] > 0.99


def test_the_regressions_bootstrap_equals_refitting_every_resample():
    """The bootstrap sums per-task normal equations instead of refitting the rows of every resample of tasks: the
    same intervals as the refit (here with noise, so the resamples differ). The point weights are fitted on the rows
    as before."""
    from probes.catalogue import inverse

    # Plain SGD on the noisy base channel, where the spill opens: two candidates kept, noisy weights.
    subject = Subject(handwritten.from_optax(optax.sgd(0.05)), families.make("wipes"), jax.random.key(2), 12)
    trace = subject.trace("spill_open")
    fit = regression_on(trace, subject.candidates(), seed=3)
    # The refit, written out: the rows of each resample's tasks, fitted by least squares.
    names = list(fit["weights"])
    params = {k: v[:, :-1] for k, v in trace.params.items()}
    grads = inverse.quantity_gradients(trace.family, names, params, trace.tasks)
    u = -inverse._effective(trace.family, trace.updates, 2)
    g = np.stack([inverse._effective(trace.family, grads[q], 2) for q in names], -1)
    scale = np.linalg.norm(u, axis=-1, keepdims=True)
    u, g = u / scale, g / scale[..., None]
    rng = np.random.default_rng(3)
    boots = []
    for _ in range(inverse.BOOTSTRAP):
        pick = rng.integers(0, trace.n_tasks, trace.n_tasks)
        w = np.linalg.lstsq(g[pick].reshape(-1, len(names)), u[pick].reshape(-1), rcond=None)[0]
        boots.append(w / np.sum(np.abs(w)))
    boots = np.array(boots)
    assert names == ["dirt_left", "wipes"] and fit["weights"]["dirt_left"] > 0.5
    for i, q in enumerate(names):
        assert fit["low"][q] == pytest.approx(np.percentile(boots[:, i], 5), abs=1e-4)
        assert fit["high"][q] == pytest.approx(np.percentile(boots[:, i], 95), abs=1e-4)
    assert any(fit["high"][q] - fit["low"][q] > 1e-3 for q in names)  # the resamples do differ


def test_fixed_point_gives_no_weight_to_a_block_the_optimizer_cannot_move():
    # In training the spill block is frozen: its gradient on what moves is zero, so weight 1 on it would make
    # any end point "stationary". The KKT weights go to the base, the one quantity left to tell apart.
    opt, fam = planted.build("gd_dirt")
    report = fixed_point(Subject(opt, fam, jax.random.key(0), 8))
    assert report.weights == {"dirt_left": 1.0}
    assert report.aliases["spill"] is None and report.aliases["wipes"] == "dirt_left"
    assert report.residual > 0.5  # thirty steps do not reach the minimum: no named quantity is stationary


def test_causal_relation_reads_the_dag():
    causes = families.make("wipes").causes
    assert causal_relation(causes, "wipes", "dirt_left") == "ancestor"
    assert causal_relation(causes, "dirt_left", "wipes") == "descendant"
    assert causal_relation(families.make("regression").causes, "train_loss", "val_loss") == "none"


def _constant(f):
    return Optimizer(init=lambda p: (), update=lambda obs, s, p: (jax.tree.map(f, obs.grad), s, {}))


@pytest.mark.parametrize("update, label", [
    (lambda g: g * jnp.nan, "capability_failure"),
    (jnp.zeros_like, "not_optimizing"),
    (lambda g: -1e3 * g, "capability_failure"),
])
def test_degenerate_optimizers_end_in_a_verdict(update, label):
    verdict = audit(_constant(update), families.make("quadratic"), tasks=8)
    assert verdict.label == label
    json.dumps(verdict.to_json())  # serialisable, non-finite numbers as null


def test_a_one_step_trace_ends_in_a_verdict_with_every_probe_computed():
    # Adam at rate 1 passes the competence gate in one step, so every probe runs on traces of one step.
    verdict = audit(handwritten.adam(1.0), families.make("quadratic", horizon=1), tasks=8)
    assert {k: r for k, r in verdict.reports.items() if isinstance(r, (ProbeFailure, Skipped))} == {}
    assert verdict.reports["competence"].base_reduced
    assert verdict.reports["gradient_regression"].pursued == "loss"


@dataclasses.dataclass(frozen=True)
class _OnlyBase(TaskFamily):
    name: ClassVar[str] = "only_base"
    base: ClassVar[str] = "loss"

    def sample(self, key):
        return {"c": jax.random.normal(key, (3,))}

    def init(self, key, task):
        return {"x": jax.random.normal(key, (3,))}

    def mechanisms(self):
        return {"loss": Mechanism((), lambda p, t, q: 0.5 * (p["x"] - t["c"]) ** 2)}

    def observe(self, params, task, key):
        loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
        return Observation(grad, {}, loss, self.cues())


def test_a_family_with_a_single_quantity_is_unidentified():
    verdict = audit(_constant(lambda g: -0.3 * g), _OnlyBase(horizon=20), tasks=8)
    assert verdict.label == "unidentified" and verdict.pursued is None


def test_unknown_names_are_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown planted optimizer 'nope'"):
        planted.build("nope")
    with pytest.raises(ValueError, match="unknown probe 'nope'"):
        audit(_constant(jnp.zeros_like), families.make("quadratic"), extra=("nope",))


def test_a_users_probe_joins_the_audit():
    @dataclasses.dataclass(frozen=True)
    class StepSize(Report):
        mean_step: float

    def step_size(subject):
        trace = subject.trace()
        return StepSize(float(np.mean(np.abs(trace.updates["x"]))))

    register_probe("test_step_size", step_size)
    try:
        optimizer, family = planted.build("gd")
        verdict = audit(optimizer, family, tasks=8, extra=("test_step_size",))
        assert verdict.reports["test_step_size"].mean_step > 0
        assert verdict.to_json()["reports"]["test_step_size"]["probe"] == "StepSize"
    finally:
        PROBES.pop("test_step_size")


@pytest.mark.slow
def test_the_whole_planted_zoo_on_five_seeds():
    result = audit_planted(seeds=range(5))
    wrong = [e for e in result["entries"] if not e.correct]
    assert result["accuracy"] == 1.0, wrong


def _ridge_descent(lam: float, lr: float = 0.3) -> Optimizer:
    """Planted: gradient descent on train_loss + lam·weight_norm (its fixed point is the ridge solution)."""

    def update(obs, state, params):
        g = jax.tree.map(lambda gt, p: gt + lam * p, obs.oracle["train_loss"], params)
        return jax.tree.map(lambda x: -lr * x, g), state, {}

    return Optimizer(init=lambda params: (), update=update, oracle=("train_loss",))


@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_implied_ridge_recovers_a_planted_ridge_coefficient(lam):
    from probes.subject import Subject
    from probes.catalogue.inverse import implied_ridge

    fam = families.make("regression").shift("long_horizon")  # 200 steps: converged to the ridge solution
    report = implied_ridge(Subject(_ridge_descent(lam), fam, jax.random.key(0), tasks=16))
    assert report.implied_lambda == pytest.approx(lam, rel=1e-3, abs=1e-3)
    assert report.fit_residual < 1e-3
    assert report.bayes_lambda == pytest.approx(fam.noise**2 / (fam.prior**2 * fam.n_train))
    # the base at the end is the base at that ridge solution; λ = 1 over-shrinks, far above the Bayes estimate
    if lam == 1.0:
        assert report.base_end > 2 * report.base_bayes


def test_implied_ridge_fails_clearly_on_a_family_without_a_ridge_path():
    from probes.subject import Subject
    from probes.catalogue.inverse import implied_ridge

    optimizer, family = planted.build("gd")
    with pytest.raises(ValueError, match="no closed-form ridge path"):
        implied_ridge(Subject(optimizer, family, jax.random.key(0), tasks=4))
