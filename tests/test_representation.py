"""Representation probes (README, "Auditing an optimizer") on planted ground truth: a hand-built optimizer whose
captures literally hold the base value, the training cue and pure noise; the grouped cross-validation; the
controls on a tiny meta-trained learned optimizer."""

import json

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from lab import families
from lab.meta.train import MetaConfig, init_state, make_meta_step
from lab.optimizers.base import Optimizer
from probes.catalogue import representation
from probes.zoo import planted
from probes.subject import PROBES, Subject
from probes.trace import record


def _flat(tree):
    return ravel_pytree(tree)[0]


def instrumented(lr=0.1):
    """GD whose captures are its inputs (normalised gradient, parameter), a memory holding log(base), one
    holding the training cue, and four channels of fresh Gaussian noise."""

    def init(params):
        return jax.random.key_data(jax.random.key(0))

    def update(obs, state, params):
        key, sub = jax.random.split(jax.random.wrap_key_data(state))
        g = _flat(obs.grad)
        n = g.size
        captures = {"input/grad": g / jnp.sqrt(jnp.mean(g**2) + 1e-12), "input/param": _flat(params),
                    "memory/base": jnp.full((n,), jnp.log(obs.loss)),
                    "memory/cue": jnp.full((n,), obs.cues["training"]),
                    "memory/noise": jax.random.normal(sub, (n, 4))}
        return jax.tree.map(lambda x: -lr * x, obs.grad), jax.random.key_data(key), captures

    return Optimizer(init=init, update=update)


def test_planted_memories_are_recovered_and_noise_is_not():
    fam = families.make("quadratic")
    report = PROBES["representation"](Subject(instrumented(), fam, jax.random.key(0), tasks=8))
    assert report.available and report.captures == ["memory/base", "memory/cue", "memory/noise"]
    assert set(report.targets) == {"loss", "norm", "distance", "training"}
    r2, base = report.r2, report.input_baseline
    assert r2["memory/base"]["loss"] > 0.99 and base["loss"] < 0.5
    assert report.gap_input["memory/base"]["loss"] > 0.5
    assert r2["memory/cue"]["training"] > 0.99 and report.represented["training"] == ["memory/cue"]
    assert report.represented["loss"] == ["memory/base"]
    assert all(abs(v) < 0.05 for v in r2["memory/noise"].values()), r2["memory/noise"]
    assert not any("memory/noise" in caps for caps in report.represented.values())
    for per_target in report.control.values():                      # shuffled targets: nothing to decode
        assert all(abs(v) < 0.05 for v in per_target.values()), report.control
    assert report.untrained is None and report.gap_untrained is None
    json.dumps(report.to_json())


def test_optimizer_without_captures_is_reported_unavailable():
    opt, fam = planted.build("gd")
    report = PROBES["representation"](Subject(opt, fam, jax.random.key(0), tasks=4))
    assert report.available is False and "captures" in report.reason
    assert report.to_json()["available"] is False


def test_cross_validation_is_grouped_by_task():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 50)
    per_task = rng.normal(size=8)[groups]
    one_hot = np.eye(8)[groups]                                     # memorises tasks, generalises nothing
    assert representation.ridge_cv(one_hot, per_task, groups) < 0.05
    x = rng.normal(size=(400, 3))
    assert representation.ridge_cv(x, x @ np.array([1.0, -2.0, 0.5]) + 3.0, groups) > 0.999
    assert abs(representation.ridge_cv(x, rng.normal(size=400), groups)) < 0.05
    assert np.isnan(representation.ridge_cv(x, np.ones(400), groups))


@pytest.fixture(scope="module")
def trained():
    config = MetaConfig(family="quadratic", meta_steps=50, tasks=8, truncation=5, hidden=16)
    state, step = init_state(config), jax.jit(make_meta_step(config))
    for _ in range(config.meta_steps):
        state, _ = step(state)
    return config.learned_optimizer(), state.meta, config.family_obj()


def test_learned_optimizer_with_every_control(trained):
    lopt, meta, fam = trained
    report = representation.representation_report(lopt, meta, fam, jax.random.key(0), tasks=8)
    assert report.available and report.captures == ["mlp/hidden_0", "mlp/hidden_1", "output/direction",
                                                    "output/magnitude", "output/step"]
    assert set(report.untrained) == set(report.captures)
    for c in report.captures:
        for t in report.targets:
            assert report.gap_input[c][t] == pytest.approx(report.r2[c][t] - report.input_baseline[t])
            assert report.gap_untrained[c][t] == pytest.approx(report.r2[c][t] - report.untrained[c][t])
            assert abs(report.control[c][t]) < 0.1
    # The inputs carry log(loss / first loss): the first hidden layer decodes the base from them.
    assert report.r2["mlp/hidden_0"]["loss"] > 0.5
    # The default inputs have no cue feature: nothing can decode it, train and cue_deploy rollouts coincide.
    assert report.represented["training"] == []
    json.dumps(report.to_json())


def test_untrained_shadow_leaves_the_subject_untouched(trained):
    lopt, meta, fam = trained
    opt = lopt.optimizer(meta)
    shadow = representation.shadowed(opt, lopt.optimizer(lopt.init_meta(jax.random.key(5))))
    plain, both = (record(o, fam, jax.random.key(0), 2, 5, captures=True) for o in (opt, shadow))
    np.testing.assert_array_equal(both.updates["x"], plain.updates["x"])
    assert set(both.captures) == set(plain.captures) | {"untrained/" + k for k in plain.captures}
    assert not np.allclose(both.captures["untrained/mlp/hidden_0"], plain.captures["mlp/hidden_0"])
