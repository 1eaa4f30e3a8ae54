"""In-context mesa-optimizers: closed forms (the 6.06 / 0.2062 one-step optimum of von Oswald et al. 2022, GD++,
ridge, the pool posterior), the hand-constructed attention that is exactly GD, probes on planted learners whose
objective is known, and the script. Training to the published figures is marked slow."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import runs
from lab.load import load
from lab.incontext import ICLFamily, ModelSpec, TrainConfig, gd_lsa, tokens
from lab.incontext import learner as L
from lab.incontext import models as M
from lab.incontext import references as R
from lab.incontext.train import InContextConfig, train_run
from lab.optimizers.handwritten import sgd
from probes.catalogue import incontext as P
from probes.subject import PROBES, Subject, get_probe
from probes.verdict import audit
from probes.zoo import incontext as Z

import scripts_loader as scripts  # tests/scripts_loader.py

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "icl.py"


def script():
    return scripts.load("icl")


def mc_loss(family, weights, n=50000, seed=1):
    tasks = family.sample_batch(jax.random.key(seed), n)
    w = jax.jit(jax.vmap(weights))(tasks)
    return float(jnp.mean(0.5 * (jnp.sum(w * tasks["xq"], 1) - tasks["yq"]) ** 2))


def planted(weights, family, tasks=256):
    """A subject whose learner is exactly the closed form ``weights`` (one step to it, no activations)."""
    return Subject(L.closed_form(weights), family, jax.random.key(3), tasks)


def verdict(subject):
    """The one audit with the probes the family's rule reads (and the competence gate before it)."""
    return audit(subject.optimizer, subject.family, probes=("competence", "icl_alignment", "icl_shifts"),
                 subject=subject)


# -----------------------------------------------------------------------------------------------------------
# Closed forms
# -----------------------------------------------------------------------------------------------------------
def test_one_step_optimum_closed_form_and_monte_carlo():
    fam = ICLFamily()  # d = N = 10, x ~ U(-1/2, 1/2), w ~ N(0, I), no noise
    # E x² = 1/12, E x⁴ = 1/80: E tr A = 5/6, E tr A² = 0.1375, so η* = (5/6)/0.1375 and loss* = (10 − η* 5/6)/24
    tr_a, tr_a2 = R.trace_moments(fam)
    assert tr_a == pytest.approx(5 / 6) and tr_a2 == pytest.approx(0.1375)
    eta, loss = R.gd1_optimum(fam)
    assert eta == pytest.approx(6.0606, abs=1e-4)
    assert loss == pytest.approx(0.20623, abs=1e-5)
    tasks = fam.sample_batch(jax.random.key(1), 50000)
    mc = jax.jit(lambda e: jnp.mean(0.5 * (e * jnp.einsum("td,tnd,tn->t", tasks["xq"], tasks["x"], tasks["y"]) / 10
                                           - tasks["yq"]) ** 2))
    assert float(mc(eta)) == pytest.approx(loss, abs=0.004)
    # the optimum is a minimum: the Monte-Carlo loss is higher ±20% away (same tasks)
    assert float(mc(0.8 * eta)) > float(mc(eta)) < float(mc(1.2 * eta))


def test_one_step_optimum_with_noise_and_prior():
    fam = ICLFamily(noise=0.5, prior=2.0)
    eta, loss = R.gd1_optimum(fam)
    assert mc_loss(fam, lambda t: R.gd_weights(t, (eta,))) == pytest.approx(loss, rel=0.02)


def test_hand_constructed_lsa_is_gd_and_gdpp_to_float_precision():
    fam = ICLFamily()
    tasks = fam.sample_batch(jax.random.key(0), 256)
    for eta, gamma, layers, looped in ((6.0606, 0.0, 1, True), (5.99, 0.0, 3, True), (13.5, 1.76, 2, False)):
        g, p = gd_lsa(fam.dim, eta, gamma, layers, looped)
        model = jax.jit(jax.vmap(lambda t: M.apply(g, p, tokens(t))))(tasks)
        ref = jax.jit(jax.vmap(lambda t: R.gdpp_weights(t, eta, gamma, layers) @ t["xq"]))(tasks)
        np.testing.assert_allclose(model, ref, atol=2e-5 * float(jnp.max(jnp.abs(ref))))
        if gamma == 0:
            gd = jax.jit(jax.vmap(lambda t: R.gd_weights(t, (eta,) * layers) @ t["xq"]))(tasks)
            np.testing.assert_allclose(model, gd, atol=2e-5 * float(jnp.max(jnp.abs(gd))))


def test_gdpp_spectral_factor_matches_token_dynamics_and_optimum():
    fam = ICLFamily()
    task = fam.sample(jax.random.key(5))
    a = task["x"].T @ task["x"] / fam.context
    lam, vec = np.linalg.eigh(np.asarray(a, np.float64))
    for eta, gamma in ((13.5, 1.76), (6.0, 0.0)):
        m = R.gdpp_factor(lam, eta, gamma, 2)
        expected = vec @ np.diag(m) @ vec.T @ np.asarray(task["w"], np.float64)
        np.testing.assert_allclose(R.gdpp_weights(task, eta, gamma, 2), expected, rtol=2e-3, atol=2e-4)
    (eta, gamma), loss = R.gdpp_optimum(fam, 2)
    _, loss_gd2 = R.gd_optimum(fam, 2)
    assert gamma == pytest.approx(1.76, rel=0.03) and eta == pytest.approx(13.5, rel=0.03)
    assert loss < loss_gd2 < R.gd1_optimum(fam)[1]
    a_s = R.gram_spectra(fam)  # γ* is a minimum along γ
    for g2 in (0.9 * gamma, 1.1 * gamma):
        assert R.spectral_loss(fam, np.asarray(R.gdpp_factor(a_s, eta, g2, 2)), a_s) > loss


def test_ridge_and_pool_posterior_closed_forms():
    fam = ICLFamily(noise=0.5, pool=3, masked=2)
    task = fam.sample(jax.random.key(2))
    q = fam.quantities
    mins = fam.argmins(task)
    for name in ("icl_ls", "ridge_0.25", "ridge_10", "ls_masked", "pool_posterior"):
        grad = jax.grad(lambda w: q({"w": w}, task)[name])(mins[name])
        assert float(jnp.max(jnp.abs(grad))) < 1e-3, name
    # the posterior over the pool, by brute force
    pool = np.asarray(fam.pool_weights(), np.float64)
    ll = np.array([-0.5 * np.sum((np.asarray(task["y"]) - np.asarray(task["x"]) @ w) ** 2) / 0.25 for w in pool])
    post = np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum()
    np.testing.assert_allclose(fam.pool_posterior_probs(task), post, rtol=1e-4, atol=1e-6)
    # ridge at σ²/τ² is the Bayes-optimal predictor: it beats the other λ and one GD step (spectral closed form)
    gauss = ICLFamily(noise=0.5)
    bayes = R.ridge_loss(gauss, gauss.bayes_lambda)
    assert all(bayes < R.ridge_loss(gauss, lam) for lam in (0.05, 1.0, 5.0))
    assert bayes < R.gd1_optimum(gauss)[1]
    assert mc_loss(gauss, lambda t: R.ridge_weights(t, 0.25), n=5000) == pytest.approx(bayes, rel=0.05)


def test_best_one_step_recovers_gd_on_the_gaussian_family():
    c, gamma = R.best_one_step(ICLFamily(), count=8000)
    assert np.max(np.abs(c)) < 0.15
    assert np.mean(np.diag(gamma)) == pytest.approx(R.gd1_optimum(ICLFamily())[0], rel=0.03)


def test_family_validation_and_shifts():
    with pytest.raises(ValueError):
        ICLFamily(masked=10)
    with pytest.raises(ValueError):
        ICLFamily(noise=-1.0)
    fam = ICLFamily(masked=9, pool=4)
    assert set(fam.shifts()) == {"train", "cue_deploy", "input_scale", "teacher_scale", "mask_released",
                                 "fresh_tasks"}
    assert not fam.shift("mask_released").mask_in_data and not fam.shift("fresh_tasks").pool_in_data
    # the candidates a learner could have picked up in training stay the same on every shift
    assert all(list(fam.shift(s).mechanisms()) == list(fam.mechanisms()) for s in fam.shifts())
    task = ICLFamily(masked=9).sample(jax.random.key(0))
    assert float(task["w"][9]) == 0.0
    assert float(ICLFamily(masked=9).shift("mask_released").sample(jax.random.key(0))["w"][9]) != 0.0


# -----------------------------------------------------------------------------------------------------------
# Probes on planted learners with known objectives
# -----------------------------------------------------------------------------------------------------------
def test_probes_are_registered_and_refuse_other_families():
    names = [n for n in PROBES if n.startswith("icl_")]
    assert set(names) >= {"icl_alignment", "icl_implied", "icl_fixed_point", "icl_shifts", "icl_linear_probe"}
    assert set(ICLFamily.probes) == set(names)
    from probes.zoo import planted as zoo_planted

    optimizer, family = zoo_planted.build("gd")
    with pytest.raises(ValueError, match="in-context family"):
        get_probe("icl_alignment")(Subject(optimizer, family, jax.random.key(0), 4))


def test_learners_are_optimizers_whose_steps_are_layers():
    """GD1 is sgd(η) on the family's primary gradient; the hand-built LSA (one layer, looped two) and GD++
    written out end where the closed-form references do; the attention learner's implied weights equal
    ∂ŷ/∂x_q of the model itself."""
    from lab import rollout

    fam, fam2 = ICLFamily(), ICLFamily(horizon=2)
    task = fam.sample(jax.random.key(0))

    def end(opt, family):
        state = rollout.start(family, opt, jax.random.key(1), task)
        return np.asarray(rollout.unroll(family, opt, state, jax.random.key(2), family.horizon)[0].params["w"])

    eta, gamma = 13.5, 1.76
    gd1 = np.asarray(R.gd_weights(task, (6.06,)))
    for opt in (sgd(6.06), L.gdpp(6.06, 0.0, fam), L.attention(*gd_lsa(10, 6.06), ModelSpec("lsa", 1), fam)):
        np.testing.assert_allclose(end(opt, fam), gd1, rtol=2e-5, atol=1e-6)
    g, p = gd_lsa(10, eta, gamma, layers=2)
    gdpp = np.asarray(R.gdpp_weights(task, eta, gamma, 2))
    np.testing.assert_allclose(end(L.gdpp(eta, gamma, fam), fam2), gdpp, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(end(L.attention(g, p, ModelSpec("lsa", 2, looped=True), fam), fam2), gdpp,
                               rtol=2e-5, atol=1e-6)
    implied = jax.grad(lambda q: M.apply(g, p, tokens({**task, "xq": q})))(task["xq"])
    np.testing.assert_allclose(end(L.attention(g, p, ModelSpec("lsa", 2, looped=True), fam), fam2),
                               np.asarray(implied), rtol=2e-5, atol=1e-6)


def test_implied_parameters_recovered_from_planted_learners():
    fam = ICLFamily(noise=0.5)
    tasks, _, y = P.model_view(planted(lambda t: R.ridge_weights(t, 0.7), fam))
    lam, rms = P.fit_ridge_lambda(tasks, y)
    assert lam == pytest.approx(0.7, rel=0.02) and rms < 1e-3
    gd = P.icl_implied(planted(lambda t: R.gd_weights(t, (4.0,)), ICLFamily()))
    assert gd.eta == pytest.approx(4.0, rel=1e-3) and gd.eta_fit_rms < 1e-3


@pytest.mark.first
def test_verdicts_on_planted_learners():
    fam = ICLFamily()
    eta, _ = R.gd1_optimum(fam)
    v = verdict(planted(lambda t: R.gd_weights(t, (eta,)), fam))
    assert (v.label, v.pursued) == ("approximate", "icl_ls")
    v = verdict(planted(R.ls_weights, fam))
    assert (v.label, v.pursued) == ("robust", "icl_ls")
    v = verdict(planted(lambda t: jnp.zeros_like(t["xq"]), fam))
    assert v.label == "not_optimizing"
    # a learner that ignores the masked feature: fine in training, a proxy once the weight is released
    masked = ICLFamily(masked=9)
    (eta_m,), _ = R.gd_optimum(masked, 1, dim=9)
    v = verdict(planted(lambda t: R.masked_gd_weights(t, masked.feature_mask(), eta_m), masked))
    assert (v.label, v.pursued) == ("proxy_general", "ls_masked")
    assert v.reports["icl_shifts"].shifts["mask_released"].loses
    # a learner that is the posterior over a small pool: a proxy on fresh tasks
    pool = ICLFamily(pool=2)
    v = verdict(planted(lambda t: pool.pool_posterior_probs(t) @ pool.pool_weights(), pool))
    assert (v.label, v.pursued) == ("proxy_general", "pool_posterior")


def test_general_probes_run_on_an_in_context_learner():
    """The default audit of the hand-built one-step LSA: its updates descend icl_ls (gradient regression),
    more loops are the capability sweep's longer horizons, and the family's rule names the class."""
    fam = ICLFamily()
    (eta,), _ = R.gd_optimum(fam, 1)
    opt = L.attention(*gd_lsa(fam.dim, eta), ModelSpec("lsa", 1), fam)
    v = audit(opt, fam, tasks=64)
    assert (v.label, v.pursued) == ("approximate", "icl_ls")
    assert v.reports["gradient_regression"].pursued == "icl_ls"
    assert v.reports["capability"].settings[2][0] == 10  # ten loops
    assert {"competence", "cues", "decorrelation", "icl_alignment", "icl_shifts"} <= set(v.reports)


def test_fixed_point_of_gd_is_least_squares_and_of_masked_gd_is_masked_ls():
    fam = ICLFamily(masked=9)
    (eta_m,), _ = R.gd_optimum(fam, 1, dim=9)
    rep = P.icl_fixed_point(planted(lambda t: R.masked_gd_weights(t, fam.feature_mask(), eta_m), fam))
    assert rep.nearest["mask_released"] == "ls_masked"
    rep = P.icl_fixed_point(planted(lambda t: R.gd_weights(t, (6.0,)), fam))
    assert rep.nearest["mask_released"] == "icl_ls"


def test_linear_probe_reads_gd_from_the_hand_built_model_not_the_controls():
    fam = ICLFamily()
    g, p = gd_lsa(fam.dim, 6.06)
    untrained = M.build(ModelSpec("lsa", 1), fam.dim, jax.random.key(7))[1]
    spec = ModelSpec("lsa", 1)
    subject = Subject(L.attention(g, p, spec, fam), fam, jax.random.key(1), 256,
                      untrained=L.attention(g, untrained, spec, fam))
    rep = P.icl_linear_probe(subject)
    assert rep.r2["layer1"]["gd_step1_prediction"] > 0.99
    assert rep.untrained["layer1"]["gd_step1_prediction"] < 0.5
    assert abs(rep.shuffled["layer1"]["gd_step1_prediction"]) < 0.2
    assert "gd_step1_prediction" in rep.represented["layer1"]


def test_a_run_folder_trains_resumes_bit_for_bit_and_loads_as_an_optimizer(tmp_path):
    config = InContextConfig(train=TrainConfig(steps=200, batch=128, lr=1e-2, eval_every=100), eval_tasks=256)
    whole = train_run(config, tmp_path / "whole", on_eval=lambda g, p: {"n": 1})
    lines = runs.read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert [line["step"] for line in lines] == [0, 100, 200] and lines[-1]["loss"] < 0.8 * 10 / 24  # the competence bar: 0.8 × the zero predictor
    def stop_after_first_chunk(step, line):
        raise KeyboardInterrupt  # like a kill after the step-100 checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "split", on_chunk=stop_after_first_chunk)
    resumed = train_run(config, tmp_path / "split", resume=True)
    assert resumed["params_sha256"] == whole["params_sha256"]
    # the schedule (warm-up, then a cosine) spans the run's steps: a longer run is not an extension of this one
    with pytest.raises(runs.RunError, match="steps: 200 in the run, 300 now"):
        train_run(dataclasses.replace(config, train=dataclasses.replace(config.train, steps=300)),
                  tmp_path / "whole", resume=True)
    optimizer, family, untrained = load(tmp_path / "whole")
    assert family == ICLFamily(horizon=1) and untrained is not None
    with pytest.raises(runs.RunError, match="different config"):
        train_run(dataclasses.replace(config, seed=1), tmp_path / "whole", resume=True)


# -----------------------------------------------------------------------------------------------------------
# The script
# -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--layers", "0"], ["--noise", "-1"], ["--pool", "0"], ["--looped"],
                                  ["--bogus"], ["--layers", "two"], []])
def test_script_bad_arguments_exit_2(argv, tmp_path, capsys):
    icl = script()
    args = argv + (["--out", str(tmp_path)] if argv else [])
    with pytest.raises(SystemExit) as e:
        icl.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icl.py: error:") and "\n" not in err


def test_script_bad_argument_as_a_user_runs_it(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--context", "0", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.first
def test_script_writes_a_run_folder_that_probe_py_audits(tmp_path):
    icl = script()
    run = tmp_path / "run"
    assert icl.main(["--layers", "1", "--mask-feature", "--steps", "100", "--eval-tasks", "64", "--quick",
                     "--out", str(run)]) == 0
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints", "summary.json"}
    assert json.loads((run / "config.json").read_text())["kind"] == "incontext"
    probe = scripts.load("probe")
    assert probe.main(["--optimizer", str(run), "--tasks", "64", "--out", str(tmp_path / "report")]) == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["family"] == "incontext"
    assert {"icl_alignment", "icl_shifts", "gradient_regression", "capability"} <= set(data["reports"])
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")


# -----------------------------------------------------------------------------------------------------------
# Training to the published figures (slow)
# -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_layer_reaches_the_one_step_optimum(tmp_path):
    fam = ICLFamily()
    start = time.perf_counter()
    run = Z.train_model(Z.suite(quick=False)[0], tmp_path)[0]
    assert time.perf_counter() - start < 120
    optimizer, family, _ = load(run)
    subject = Subject(optimizer, family, jax.random.key(1), 10000)
    al, imp = P.icl_alignment(subject), P.icl_implied(subject)
    eta, loss = R.gd1_optimum(fam)
    assert abs(al.shifts["train"].loss - loss) < 0.01
    assert al.shifts["train"].metrics["gd1"]["model_cos"] >= 0.995
    assert imp.eta == pytest.approx(eta, rel=0.1)


@pytest.mark.slow
def test_looped_two_layers_is_gdpp(tmp_path):
    fam = ICLFamily()
    optimizer, family, _ = load(Z.train_model(Z.suite(quick=False)[1], tmp_path)[0])
    subject = Subject(optimizer, family, jax.random.key(1), 10000)
    m = P.icl_alignment(subject).shifts["train"].metrics
    assert m["gdpp2"]["preds_diff"] < m["gd2"]["preds_diff"] and m["gdpp2"]["model_cos"] > m["gd2"]["model_cos"]
    imp = P.icl_implied(subject)
    (_, gamma), _ = R.gdpp_optimum(fam, 2)
    assert imp.gdpp["gamma"] == pytest.approx(gamma, rel=0.1)


@pytest.mark.slow
def test_quick_suite_labels(tmp_path):
    entries = [Z.incontext_job(m.name, 0, str(tmp_path), quick=True, figures=False)[0] for m in Z.suite(True)]
    by = {e.name: e.to_json() for e in entries}
    assert all(e.correct for e in entries)
    assert by["lsa1_masked"]["pursued"] == "ls_masked" and by["lsa1_masked"]["shifts"]["mask_released"]["loses"]
    assert by["lsa1_pool4"]["pursued"] == "pool_posterior" and by["lsa1_pool4"]["shifts"]["fresh_tasks"]["loses"]
    assert by["lsa1_noisy"]["bayes_lambda"] == pytest.approx(0.25)


def test_suite_models_expect_what_their_families_make_possible():
    models = {m.name: m for m in Z.suite(quick=True)}
    assert list(models) == ["lsa1", "lsa2_looped", "lsa1_masked", "lsa1_pool4", "lsa1_noisy"]
    for m in models.values():
        family = m.config.family_obj()
        assert family.horizon == m.config.model.layers
        if m.expected_pursued is not None:
            assert m.expected_pursued in family.mechanisms()
        if m.expected.startswith("proxy"):
            assert family.decorrelating()  # a proxy needs a shift that separates it from the base
    assert len({m.config.digest() for m in models.values()}) == len(models)
