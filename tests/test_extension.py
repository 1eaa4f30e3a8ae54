"""Writing a new experiment from the README alone (issue 16): a user's family from a module path through
``train.py`` and ``probe.py``, the traps that now fail loudly, ``descend_mixture`` against its closed form,
quantities that are not candidates, learned-optimizer features in the config, and relative changes from 0."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab import families, rollout
from lab.families.base import Mechanism, Observation, TaskFamily, check_family
from lab.meta.evaluate import compare_with_adam, evaluation_warnings
from lab.meta.run import train
from lab.meta.train import MetaConfig
from lab.optimizers.handwritten import descend, descend_mixture, sgd
from probes.catalogue.competence import change_scale, relative_change
from probes.thresholds import CHANGE_SCALE

ROOT = Path(__file__).resolve().parent.parent
GREENHOUSE = "scripts/example_family/greenhouse.py:Greenhouse"


def _script(name, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _one_line_exit_2(result, message):
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


@pytest.fixture
def registry():
    """The family registry and ``sys.path`` as they were before the test (a user's registrations undone)."""
    saved, path = dict(families._REGISTRY), list(sys.path)
    yield families
    families._REGISTRY.clear()
    families._REGISTRY.update(saved)
    sys.path[:] = path


# --- families of the tests' own ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Hidden(TaskFamily):
    """Computes a channel it does not declare: the trap of a silently hidden channel."""

    name: ClassVar[str] = "test_hidden_channel"

    def sample(self, key):
        return {"c": jax.random.normal(key, (3,))}

    def init(self, key, task):
        return {"x": jnp.zeros((3,))}

    def mechanisms(self):
        return {"loss": Mechanism((), lambda p, t, q: 0.5 * (p["x"] - t["c"]) ** 2),
                "norm": Mechanism((), lambda p, t, q: 0.5 * p["x"] ** 2)}

    def observe(self, params, task, key):
        loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
        return Observation(grad, {"norm": jax.grad(self.quantity("norm"))(params, task)}, loss, self.cues())


@dataclasses.dataclass(frozen=True)
class _Amplifier(TaskFamily):
    """A world that multiplies θ by ``growth`` every step: any optimizer's θ leaves every finite range."""

    growth: float = 1e20
    horizon: int = 3
    name: ClassVar[str] = "test_amplifier"

    def sample(self, key):
        return {"c": jax.random.normal(key, (2,))}

    def init(self, key, task):
        return {"x": 1.0 + jax.random.uniform(key, (2,))}

    def mechanisms(self):
        return {"loss": Mechanism((), lambda p, t, q: 0.5 * (p["x"] - t["c"]) ** 2)}

    def observe(self, params, task, key):
        loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
        return Observation(grad, {}, loss, self.cues())

    def apply_update(self, params, update):
        return {k: self.growth * v + update[k] for k, v in params.items()}


# --- 1. traps that fail loudly -------------------------------------------------------------------------------
def test_an_undeclared_channel_is_a_one_line_error_naming_the_fix(registry, key):
    fam = _Hidden()
    task = fam.sample(key)
    with pytest.raises(ValueError, match=r"does not declare; add channels: ClassVar\[tuple\[str, \.\.\.\]\] = "
                                         r"\('norm',\) to _Hidden") as err:
        fam.observe(fam.init(key, task), task, key)  # at the first observation, traced or not
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does not declare"):
        families.register(fam.name, _Hidden)  # and at registration, before any rollout
    assert fam.name not in families.names()
    declared = dataclasses.make_dataclass("_Declared", [], bases=(_Hidden,), frozen=True,
                                          namespace={"channels": ("norm",), "name": "test_declared"})
    families.register("test_declared", declared)  # declared: fine
    every_builtin_is_consistent = [check_family(families.make(n)) for n in families.names()]
    assert len(every_builtin_is_consistent) == len(families.names())


def test_a_declared_channel_that_is_not_computed_is_an_error(key):
    missing = dataclasses.make_dataclass("_Missing", [], bases=(_Amplifier,), frozen=True,
                                         namespace={"channels": ("ghost",)})
    with pytest.raises(ValueError, match=r"declares channels \['ghost'\] that observe\(\) does not compute"):
        check_family(missing())


def test_train_script_refuses_a_family_with_an_undeclared_channel(tmp_path):
    (tmp_path / "hidden.py").write_text(textwrap.dedent('''
        import dataclasses
        from typing import ClassVar
        import jax, jax.numpy as jnp
        from lab.families import Mechanism, Observation, TaskFamily

        @dataclasses.dataclass(frozen=True)
        class Hidden(TaskFamily):
            name: ClassVar[str] = "hidden"
            def sample(self, key): return {"c": jax.random.normal(key, (3,))}
            def init(self, key, task): return {"x": jnp.zeros((3,))}
            def mechanisms(self): return {"loss": Mechanism((), lambda p, t, q: 0.5 * (p["x"] - t["c"]) ** 2)}
            def observe(self, params, task, key):
                loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
                return Observation(grad, {"exact": grad}, loss, self.cues())
    '''))
    result = _script("train.py", "--family", f"{tmp_path / 'hidden.py'}:Hidden", "--out", str(tmp_path / "run"))
    _one_line_exit_2(result, "computes gradient channels ['exact'] in observe() that it does not declare")
    assert not (tmp_path / "run").exists()


def test_a_diverging_evaluation_warns_in_the_terminal_and_in_the_summary(registry, tmp_path, capsys):
    families.register(_Amplifier.name, _Amplifier)
    config = MetaConfig(family=_Amplifier.name, meta_steps=1, tasks=2, truncation=1, hidden=4, eval_tasks=2)
    summary = train(config, tmp_path / "run")
    err = capsys.readouterr().err
    assert summary["eval"]["lopt_base"] is None
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"] == summary["warnings"]
    diverged, out_of_range = summary["warnings"]
    assert diverged.startswith("evaluation diverged") and "step_limit" in diverged
    assert out_of_range.startswith("θ left the finite range") and "is not finite" in out_of_range
    assert all(f"warning: {tmp_path / 'run'}: {w}" in err for w in summary["warnings"])


def test_theta_beyond_the_familys_range_warns_even_when_the_base_stays_finite(key):
    fam = _Amplifier(growth=100.0)  # after 3 steps |θ| ~ 1e6: finite, but beyond param_range
    opt = sgd(0.0)
    evaluation = compare_with_adam(fam, opt, key, tasks=2)
    assert evaluation["lopt_base"] is not None
    (warning,) = evaluation_warnings(fam, opt, key, evaluation, tasks=2)
    assert warning.startswith("θ left the finite range: on held-out tasks it reaches |θ| = ")
    assert evaluation_warnings(_Amplifier(growth=1.0), opt, key, evaluation, tasks=2) == []


# --- 2. descend_mixture ---------------------------------------------------------------------------------------
def test_descend_mixture_descends_the_weighted_mixture_in_closed_form(key):
    fam = families.make("cues")  # target ½‖x − a‖², other ½‖x − b‖²
    w_t, w_o, lr = 0.7, 0.3, 0.2
    opt = descend_mixture({"target": w_t, "other": w_o}, optax.sgd(lr))
    assert opt.oracle == ("target", "other")
    state = rollout.start(fam, opt, key)
    a, b, x0 = state.task["a"], state.task["b"], state.params["x"]
    final, xs = jax.jit(lambda s: rollout.unroll(fam, opt, s, key, 60, keep=lambda s, r: s.params["x"]))(state)
    # one step: x1 = x0 − lr (w_t (x0 − a) + w_o (x0 − b)); the contraction 1 − lr (w_t + w_o) after it
    np.testing.assert_allclose(xs[0], x0 - lr * (w_t * (x0 - a) + w_o * (x0 - b)), rtol=1e-5)
    star = (w_t * a + w_o * b) / (w_t + w_o)
    np.testing.assert_allclose(xs[9] - star, (1 - lr * (w_t + w_o)) ** 10 * (x0 - star), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(final.params["x"], star, atol=1e-4)
    # descend is the mixture of one quantity, bit for bit
    one, mix = descend("target", optax.sgd(lr)), descend_mixture({"target": 1.0}, optax.sgd(lr))
    run = lambda o: jax.jit(lambda s: rollout.unroll(fam, o, s, key, 5)[0].params["x"])(  # noqa: E731
        rollout.start(fam, o, key))
    np.testing.assert_array_equal(run(one), run(mix))
    with pytest.raises(ValueError, match="at least one quantity"):
        descend_mixture({}, optax.sgd(lr))


# --- 3. not candidates, 4. module:Class round trip, 6. the worked example ---------------------------------
@pytest.mark.first
def test_the_worked_example_from_outside_the_package(tmp_path):
    """The README's commands: a family in its own module, meta-trained with train.py --family MODULE:CLASS and
    audited with probe.py in a fresh process that registers it again; its intermediate quantities appear in no
    report."""
    features = "grad,mom0.9,grad:dry_sensor,mom0.9:dry_sensor,param,loss,step10"
    run, rep = tmp_path / "run", tmp_path / "rep"
    trained = _script("train.py", "--family", GREENHOUSE, "--features", features, "--meta-steps", "3", "--tasks",
                      "4", "--truncation", "4", "--eval-tasks", "4", "--quiet", "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "greenhouse" and config["features"] == features.split(",")
    assert json.loads((run / "summary.json").read_text())["warnings"] == []
    audited = _script("probe.py", "--family", GREENHOUSE, "--optimizer", str(run), "--tasks", "4", "--out", str(rep))
    assert audited.returncode == 0, audited.stderr
    record = json.loads((rep / "report.json").read_text())
    assert record["family"] == "greenhouse" and record["label"] and "sensor_open" in record["shifts"]
    text = (rep / "report.json").read_text()
    for intermediate in ("splash", "soil", "reading"):
        assert f'"{intermediate}"' not in text
    assert record["reports"]["gradient_regression"]["weights"].keys() <= {"wilting", "dry_sensor"}


def test_a_planted_proxy_on_the_example_family_is_found(registry):
    sys.path.insert(0, str(ROOT / "scripts" / "example_family"))
    import greenhouse  # noqa: PLC0415  (the example's module, as the user's code imports it)

    from probes.verdict import audit

    name = families.resolve(str(ROOT / GREENHOUSE))
    fam = families.make(name)
    assert fam.candidates() == ["wilting", "dry_sensor"] and set(fam.causes) >= {"soil", "splash", "reading"}
    # the two probes that decide here (the default audit runs in test_the_worked_example_from_outside_the_package)
    verdict = audit(greenhouse.sensor_watcher(), fam, tasks=8, probes=("competence", "affordance"))
    assert (verdict.label, verdict.pursued) == ("proxy_general", "dry_sensor")
    reports = json.dumps(verdict.to_json())
    assert all(f'"{q}"' not in reports for q in fam.not_candidates)


def test_not_candidates_must_name_quantities_other_than_the_base():
    base_too = dataclasses.make_dataclass("_BaseToo", [], bases=(_Amplifier,), frozen=True,
                                          namespace={"not_candidates": ("loss",)})
    with pytest.raises(ValueError, match="not_candidates must name quantities other than the base"):
        base_too().candidates()
    unknown = dataclasses.make_dataclass("_Unknown", [], bases=(_Amplifier,), frozen=True,
                                         namespace={"not_candidates": ("nope",)})
    with pytest.raises(ValueError, match="got 'nope'"):
        check_family(unknown())


def test_module_class_specs_register_once_and_bad_ones_are_one_line(registry, tmp_path, monkeypatch):
    (tmp_path / "mymodule.py").write_text(textwrap.dedent('''
        import dataclasses
        from typing import ClassVar
        import jax, jax.numpy as jnp
        from lab.families import Mechanism, Observation, TaskFamily

        @dataclasses.dataclass(frozen=True)
        class MyFamily(TaskFamily):
            name: ClassVar[str] = "my_family"
            def sample(self, key): return {"c": jax.random.normal(key, (3,))}
            def init(self, key, task): return {"x": jnp.zeros((3,))}
            def mechanisms(self): return {"loss": Mechanism((), lambda p, t, q: 0.5 * (p["x"] - t["c"]) ** 2)}
            def observe(self, params, task, key):
                loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
                return Observation(grad, {}, loss, self.cues())

        NotAFamily = dict
        class Unnamed(MyFamily):
            name = "family"
    '''))
    with pytest.raises(ValueError, match="unknown family 'my_family'.*a family of your own: pass MODULE:CLASS"):
        families.make("my_family")  # what probe.py says of a run on a user's family given without --family
    monkeypatch.chdir(tmp_path)  # an importable module in the current folder, as for python -m
    assert families.resolve("quadratic") == "quadratic"
    assert families.resolve("mymodule:MyFamily") == "my_family" == families.resolve("mymodule:MyFamily")
    assert families.names().count("my_family") == 1
    config = MetaConfig(family="my_family")
    assert MetaConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert type(config.family_obj()).__name__ == "MyFamily"
    for spec, message in [("nomodule:X", "cannot import 'nomodule'"), ("mymodule:Nope", "has no attribute 'Nope'"),
                          ("mymodule:", "use NAME or MODULE:CLASS"), ("mymodule:NotAFamily", "does not build"),
                          ("mymodule:Unnamed", "sets no name"), ("missing.py:X", "no such file")]:
        with pytest.raises(ValueError, match=message) as err:
            families.resolve(spec)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("script, extra", [("train.py", ["--out", "OUT"]), ("probe.py", ["--optimizer", "planted:gd",
                                                                                      "--out", "OUT"]),
                                           ("zoo.py", ["--planted", "none", "--no-incontext", "--out", "OUT"])])
def test_every_script_refuses_a_bad_family_spec_in_one_line(tmp_path, script, extra, script_error):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in extra]
    code, stderr = script_error(script.removesuffix(".py"), "--family", "no_such_module:Fam", *args)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "cannot import 'no_such_module'" in stderr, stderr
    assert not (tmp_path / "out").exists()


# --- 4. features as a config field ----------------------------------------------------------------------------
def test_features_are_a_config_field_that_default_runs_leave_out():
    default = MetaConfig()
    assert "features" not in default.to_json()  # config.json, and the zoo's config hash, as before
    assert MetaConfig.from_json(default.to_json()) == default
    assert default.learned_optimizer().inputs == MetaConfig(features=None).learned_optimizer().inputs
    chosen = MetaConfig(family="wipes", features=["grad", "mom0.9", "grad:wipes"])
    assert chosen.features == ("grad", "mom0.9", "grad:wipes") and hash(chosen)  # a tuple: static under jit
    assert chosen.learned_optimizer().inputs == ("grad", "mom0.9", "grad:wipes")
    assert MetaConfig.from_json(json.loads(json.dumps(chosen.to_json()))) == chosen
    chosen.validate()
    for features, message in [(("grad:vacuum",), "reads channel 'vacuum', which family 'wipes' does not declare"),
                              (("nope",), "unknown learned-optimizer input feature 'nope'"),
                              (("cue:phase",), "reads cue 'phase'"), ((), "non-empty"), (("grad", "grad"), "repeats")]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(chosen, features=features).validate()


def test_train_script_refuses_bad_features_in_one_line(tmp_path, script_error):
    code, stderr = script_error("train", "--family", "wipes", "--features", "grad,grad:vacuum", "--out",
                                str(tmp_path / "r"))
    assert code == 2 and stderr.count("\n") == 1 and "feature 'grad:vacuum' reads channel 'vacuum'" in stderr, stderr
    assert not (tmp_path / "r").exists()


# --- 5. relative changes from 0 -------------------------------------------------------------------------------
def test_relative_change_is_finite_and_documented_for_a_start_at_zero():
    far = np.array([[4.0, 2.0, 1.0], [2.0, 1.0, 0.5]])      # starts away from 0: divided by its start, as before
    np.testing.assert_allclose(relative_change(far), [-0.75, -0.75])
    zero = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 4.0], [1e-9, 0.0, 0.0]])  # a count that starts at (about) 0
    typical = np.median([2.0, 4.0, 1e-9])                    # its largest |q| per task, median over tasks
    np.testing.assert_allclose(change_scale(zero), np.maximum([0.0, 0.0, 1e-9], CHANGE_SCALE * typical) + 1e-12)
    np.testing.assert_allclose(relative_change(zero)[:2], np.array([2.0, 4.0]) / (CHANGE_SCALE * typical), rtol=1e-9)
    assert np.all(np.isfinite(relative_change(zero))) and relative_change(zero).max() < 1e3
    still = np.zeros((3, 4))                                  # never leaves 0: no change
    np.testing.assert_array_equal(relative_change(still), 0.0)
    diverged = np.array([[1.0, np.inf], [1.0, 0.5]])
    assert relative_change(diverged)[0] == np.inf and relative_change(diverged)[1] == pytest.approx(-0.5)
