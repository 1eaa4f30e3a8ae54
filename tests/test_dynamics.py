"""The dynamics probe (Maheswaranathan et al. 2021, "Reverse engineering learned optimizers reveals known and novel
mechanisms") on optimizers whose mechanisms are known by construction: heavy ball returns its β, Adam its β1 and
β2, SGD no momentum, clipped SGD its threshold, a decaying learning rate its schedule, and the learning-rate
adaptation slope is 1 for SGD and 0 for signSGD. The slow test runs the issue's experiment (scripts/dynamics.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab import families
from lab.optimizers import handwritten
from lab.optimizers.base import Optimizer
from lab.optimizers.learned import LearnedOptimizer
from probes import verdict
from probes.catalogue import dynamics as dyn
from probes.subject import PROBES, Panel, Subject

import scripts_loader as scripts  # tests/scripts_loader.py

QUADRATIC = families.make("quadratic")


def probe(optimizer, tasks=4):
    return dyn.dynamics(Subject(optimizer, QUADRATIC, jax.random.key(0), tasks=tasks))


def close(value, target, rel):
    return value is not None and abs(value - target) <= rel * abs(target)


def test_registered_but_not_default():
    assert "dynamics" in PROBES and "dynamics" not in verdict.DEFAULT_PROBES


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_planted_heavy_ball_beta_within_one_percent(beta):
    r = probe(handwritten.momentum(0.05, beta))
    assert close(r.momentum, beta, 0.01) and r.normaliser is None
    assert close(r.effective_momentum, beta, 0.01) and close(r.effective_step, 0.05, 0.01)
    assert r.effective_fit_r2 > 0.999
    assert close(r.adaptation_slope, 1.0, 0.02) and not r.clipped and r.schedule is None


def test_adam_returns_beta1_and_beta2():
    r = probe(handwritten.from_optax(optax.adam(0.1, b1=0.8, b2=0.99)))
    assert close(r.momentum, 0.8, 0.01) and close(r.normaliser, 0.99, 0.01)
    r = probe(handwritten.adam(0.1))
    assert close(r.momentum, 0.9, 0.01) and close(r.normaliser, 0.999, 0.01)
    assert abs(r.adaptation_slope) < 0.05                         # Adam's step ignores the gradient's scale
    assert r.schedule is not None                                 # its step count: the bias correction


def test_sgd_has_no_momentum_and_slope_one():
    r = probe(handwritten.sgd(0.1))
    assert r.state_size == 0 and r.momentum is None and r.normaliser is None
    assert r.effective_momentum == 0.0 and close(r.effective_step, 0.1, 1e-3)
    assert close(r.adaptation_slope, 1.0, 1e-3) and not r.clipped
    assert "no momentum" in r.summary("loss")


def test_sign_sgd_adaptation_slope_zero():
    r = probe(handwritten.sign_sgd(0.1))
    assert r.momentum is None and abs(r.adaptation_slope) < 1e-3 and not r.clipped


@pytest.mark.parametrize("max_norm", [0.3, 3.0])
def test_clipped_sgd_threshold(max_norm):
    r = probe(handwritten.clipped_sgd(0.1, max_norm))
    assert r.clipped and close(r.clip_threshold, max_norm, 0.02)
    assert r.slope_small > 0.99 and abs(r.slope_large) < 0.01


def test_schedule_of_a_decaying_learning_rate():
    horizon = QUADRATIC.horizon
    schedule = optax.linear_schedule(0.1, 0.01, horizon - 1)
    r = probe(handwritten.from_optax(optax.sgd(schedule)))
    assert close(r.schedule_drift, 0.1, 0.01) and r.schedule[0] == pytest.approx(1.0)


def test_mlp_state_is_its_momentum_features():
    """At its initial meta-parameters the MLP's state is its momentum features, so the eigenvalues of its state
    update are exactly their decays (and the stored first loss, 1)."""
    mlp = LearnedOptimizer(kind="mlp", inputs=("grad", "mom0.5", "mom0.9", "scale"), hidden=8)
    r = probe(mlp.optimizer(mlp.init_meta(jax.random.key(1))))
    assert r.eigen == "dense" and np.isfinite(r.effective_momentum)
    assert sorted({round(float(np.hypot(re, im)), 6) for re, im, _ in r.spectrum}) == [0.5, 0.9, 1.0]


def test_lstm_report_and_figures():
    """The LSTM's own state: finite numbers, a JSON and four figures."""
    lstm = LearnedOptimizer(kind="lstm", inputs=("grad", "scale", "step10"), hidden=8)
    r = probe(lstm.optimizer(lstm.init_meta(jax.random.key(1))))
    assert r.eigen == "dense" and np.all(np.isfinite(r.response)) and np.isfinite(r.effective_momentum)
    assert r.schedule is not None and r.state_size == 2 * 8 * QUADRATIC.dim + 1   # h, c and the first loss
    json.dumps(r.to_json(), allow_nan=True)
    panels = r.figures("loss", None)
    assert len(panels) == 4 and all(isinstance(p, Panel) for p in panels) and all(p.png for p in panels[:2])


def test_unstable_state_is_one_line_error():
    def update(obs, state, params):
        state = jax.tree.map(lambda s, g: 2.0 * s + g, state, obs.grad)
        return jax.tree.map(lambda s: -0.1 * s, state), state, {}

    unstable = Optimizer(init=lambda p: jax.tree.map(jnp.zeros_like, p), update=update)
    with pytest.raises(ValueError, match="^dynamics: ") as err:
        probe(unstable)
    assert "\n" not in str(err.value)


def test_heavy_ball_fit_and_polyak_closed_forms():
    k = np.arange(64)
    beta, eta, r2 = dyn.heavy_ball_fit(0.3 * 0.7 ** k)
    assert beta == pytest.approx(0.7, abs=1e-6) and eta == pytest.approx(0.3, rel=1e-5) and r2 > 1 - 1e-9
    alpha, beta = dyn.polyak(100.0)
    assert alpha == pytest.approx(4 / 1.1 ** 2) and beta == pytest.approx((9 / 11) ** 2)


def test_scores_take_a_parametric_optimizer_as_a_trained_run_loads():
    """``lab.load.load`` returns a trained run as a ``Parametric`` whose arguments are its meta-parameters (a dict
    of arrays): the experiment script scores it as it is, with the numbers of the same optimizer scored as a grid
    row of its ``make``. (It raised ``unhashable type: 'dict'``.)"""
    from lab.optimizers.base import Parametric

    family, key = families.make("quadratic"), jax.random.key(0)
    row = np.array([[0.05, 0.8]], np.float32)
    as_row = dyn.scores(family, dyn.heavy_ball, key, 4, row)
    trained_like = Parametric(lambda meta: dyn.heavy_ball(meta["lr_beta"]), {"lr_beta": jnp.asarray(row[0])})
    as_parametric = dyn.scores(family, trained_like, key, 4)
    for got, want in zip(as_parametric, as_row):
        assert got.shape == want.shape == (1, 4)
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_experiment_script(tmp_path):
    """The issue's experiment, short: both learned optimizers meta-trained, probed and set against the grid-tuned
    heavy ball and Polyak's β*; the numbers land in dynamics.json beside the figure."""
    script = scripts.load("dynamics")
    out = tmp_path / "dyn"
    assert script.main(["--meta-steps", "300", "--tasks", "64", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "dynamics.json").read_text())
    assert (out / "dynamics.png").stat().st_size > 10_000
    hb = result["heavy_ball"]
    assert 0.3 < hb["beta"] < 0.9 and hb["probe"]["effective_momentum"] == pytest.approx(hb["beta"], rel=0.01)
    assert result["polyak"]["beta"] == pytest.approx((9 / 11) ** 2)
    for kind in ("lstm", "mlp"):
        entry = result["learned"][kind]
        assert 0 <= entry["probe"]["effective_momentum"] < 1 and entry["probe"]["effective_step"] > 0
        assert np.isfinite(entry["score"]["meta_objective"])


def test_large_state_keeps_the_impulse_response():
    """Beyond ``MAX_STATE`` state numbers there is no dense Jacobian: the eigenvalues are reported missing, with
    the reason, while the impulse response (forward-mode, any size) still reads the planted momentum."""
    inner = optax.sgd(0.05, momentum=0.8)

    def init(params):
        return inner.init(params), jnp.zeros(dyn.MAX_STATE + 1)

    def update(obs, state, params):
        u, s = inner.update(obs.grad, state[0], params)
        return u, (s, 0.5 * state[1]), {}

    r = probe(Optimizer(init=init, update=update))
    assert r.state_size > dyn.MAX_STATE and r.momentum is None and "beyond the dense limit" in r.eigen
    assert close(r.effective_momentum, 0.8, 0.01) and close(r.effective_step, 0.05, 0.01)
