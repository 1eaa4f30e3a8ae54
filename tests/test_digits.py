"""The ``digits_mlp`` family (scikit-learn's bundled handwritten digits): the data, shapes, closed forms, candidates,
shifts, that nothing is downloaded, the family's own meta-training defaults, and the evaluation rows beyond the
training horizon. The full default training (``train.py --family digits_mlp --estimator pes``) is slow."""

import functools
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import families
from lab.families import check_family
from lab.families.digits import CLASSES, PIXELS, DigitsMLP, digits
from lab.meta.evaluate import evaluation_rows
from lab.meta.train import MetaConfig
from lab.optimizers.handwritten import adam

ROOT = Path(__file__).resolve().parent.parent
SMALL = DigitsMLP(n_train=64, n_val=32, batch=8, horizon=5)


@functools.lru_cache(maxsize=None)
def _task(family=SMALL, seed=0):
    """One task, sampled by a jitted program compiled once per family (eager sampling compiles op by op)."""
    return jax.jit(family.sample)(jax.random.key(seed))


def test_the_data_are_the_bundled_digits():
    images, labels = digits()
    assert images.shape == (1797, PIXELS) and images.dtype == np.float32 and labels.shape == (1797,)
    assert images.min() == 0.0 and images.max() == 1.0  # grey levels 0…16, divided by 16
    assert sorted(np.unique(labels).tolist()) == list(range(CLASSES))
    assert np.bincount(labels).min() >= 170  # about 180 images of every digit
    assert digits() is digits()  # read once per process


def test_no_network_is_needed(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    digits.cache_clear()
    try:
        images, _ = digits()
        task = _task()
    finally:
        digits.cache_clear()
    assert images.shape[0] == 1797 and task["x_train"].shape == (64, PIXELS)


def test_shapes_of_a_task_its_parameters_and_an_observation():
    task = _task()
    assert {k: v.shape for k, v in task.items()} == {"x_train": (64, PIXELS), "y_train": (64,), "x_val": (32, PIXELS),
                                                     "y_val": (32,)}
    params = SMALL.init(jax.random.key(1), task)
    assert {k: v.shape for k, v in params.items()} == {"w1": (PIXELS, 32), "b1": (32,), "w2": (32, CLASSES),
                                                       "b2": (CLASSES,)}
    obs = jax.jit(SMALL.observe)(params, task, jax.random.key(2))
    assert jax.tree.map(jnp.shape, obs.grad) == jax.tree.map(jnp.shape, params)
    assert obs.loss.shape == () and np.isfinite(float(obs.loss))
    check_family(DigitsMLP())
    assert families.make("digits_mlp") == DigitsMLP()


def test_training_and_validation_images_are_distinct_digits():
    task = _task()
    images, _ = digits()
    rows = {tuple(row) for row in np.asarray(task["x_train"])} | {tuple(row) for row in np.asarray(task["x_val"])}
    assert len(rows) >= 90  # 96 distinct draws; a few of the 1,797 images coincide exactly
    assert all(np.any(np.all(images == np.asarray(row), axis=1)) for row in list(rows)[:10])


def test_closed_forms_at_uniform_logits():
    task = _task()
    params = SMALL.init(jax.random.key(1), task)
    params = {**params, "w2": jnp.zeros_like(params["w2"]), "b2": jnp.zeros_like(params["b2"])}
    q = {k: float(v) for k, v in jax.jit(SMALL.quantities)(params, task).items()}
    assert q["val_loss"] == pytest.approx(math.log(10), rel=1e-6)
    assert q["train_loss"] == pytest.approx(math.log(10), rel=1e-6)
    assert q["val_error"] == pytest.approx(0.9, rel=1e-6)  # the true label's probability is 1/10 everywhere
    assert q["weight_norm"] == pytest.approx(0.5 * float(jnp.sum(params["w1"] ** 2)), rel=1e-6)
    assert q["val_misclassified"] == pytest.approx(float(jnp.mean(task["y_val"] != 0)))  # ties go to label 0


def test_candidates_leave_out_the_piecewise_constant_accuracy():
    assert DigitsMLP().candidates() == ["val_loss", "train_loss", "weight_norm", "val_error"]
    task = _task()
    params = SMALL.init(jax.random.key(1), task)
    names = SMALL.candidates() + ["val_misclassified"]
    grads = jax.jit(lambda p, t: {n: jax.grad(SMALL.quantity(n))(p, t) for n in names})(params, task)
    flat = grads.pop("val_misclassified")
    for name, g in grads.items():  # every candidate has a gradient to regress on
        assert sum(float(jnp.sum(v**2)) for v in g.values()) > 0, name
    assert all(float(jnp.max(jnp.abs(v))) == 0.0 for v in flat.values())


def test_labels_are_permuted_consistently_per_task():
    plain = _task(DigitsMLP(n_train=64, n_val=32, permute_labels=False))
    permuted = _task(DigitsMLP(n_train=64, n_val=32))
    mapping = {}
    for a, b in zip(np.concatenate([plain["y_train"], plain["y_val"]]),
                    np.concatenate([permuted["y_train"], permuted["y_val"]])):
        assert mapping.setdefault(int(a), int(b)) == int(b)  # one relabelling for both sets
    assert len(set(mapping.values())) == len(mapping)
    np.testing.assert_array_equal(plain["x_train"], permuted["x_train"])


def test_shifts():
    family = DigitsMLP()
    assert set(family.shifts()) == {"train", "cue_deploy", "small_data", "label_noise", "input_scale",
                                    "long_horizon", "wider"}
    assert family.shift("small_data").n_train == 256 and family.shift("long_horizon").horizon == 4 * family.horizon
    wider = family.shift("wider")
    assert wider.hidden == 2 * family.hidden
    shapes = jax.eval_shape(wider.init, jax.random.key(0), _task())
    assert shapes["w1"].shape == (PIXELS, 2 * family.hidden) and shapes["w2"].shape == (2 * family.hidden, CLASSES)

    base, brighter = _task(SMALL), _task(SMALL.shift("input_scale"))
    np.testing.assert_allclose(brighter["x_train"], 3 * base["x_train"], rtol=1e-6)
    np.testing.assert_array_equal(brighter["y_train"], base["y_train"])

    assert family.shift("label_noise").label_noise == 0.3
    clean, noisy = _task(SMALL), _task(SMALL.shift("label_noise"))
    changed = float(jnp.mean(clean["y_train"] != noisy["y_train"]))
    assert 0.1 < changed < 0.45  # 64 labels, 30% redrawn, a redrawn label the old one a tenth of the time: 27%
    np.testing.assert_array_equal(clean["y_val"], noisy["y_val"])  # validation labels stay clean
    np.testing.assert_array_equal(clean["x_train"], noisy["x_train"])


def test_too_many_images_is_one_line():
    with pytest.raises(ValueError, match="n_train \\+ n_val must be at most 1797"):
        DigitsMLP(n_train=1500, n_val=400).sample(jax.random.key(0))


def test_the_family_meta_training_defaults():
    config = MetaConfig.for_family("digits_mlp")
    config.validate()
    assert config.estimator == "tbptt"  # the estimator is the user's choice; the defaults set sizes and rows
    for name, value in DigitsMLP.meta_defaults.items():
        assert getattr(config, name) == value
    assert 4 in config.eval_horizons and 10 in config.eval_horizons and "wider" in config.eval_shifts
    assert MetaConfig.for_family("digits_mlp", meta_steps=7).meta_steps == 7  # what the user sets wins
    assert MetaConfig.for_family("quadratic") == MetaConfig(family="quadratic")
    data = config.to_json()
    assert MetaConfig.from_json(json.loads(json.dumps(data))) == config
    assert "eval_horizons" not in MetaConfig().to_json()  # other families' config.json (and hashes) as before


def test_train_script_takes_the_family_defaults_unless_a_flag_is_given(tmp_path, script_error):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train as script
    finally:
        sys.path.pop(0)
    config, *_ = script.parse(["--family", "digits_mlp", "--estimator", "pes", "--out", str(tmp_path / "r")])
    assert config == MetaConfig.for_family("digits_mlp", estimator="pes")
    config, *_ = script.parse(["--family", "digits_mlp", "--tasks", "8", "--eval-horizons", "2",
                               "--out", str(tmp_path / "r")])
    assert config.tasks == 8 and config.eval_horizons == (2,)
    config, *_ = script.parse(["--family", "quadratic", "--out", str(tmp_path / "r")])
    assert config == MetaConfig(family="quadratic")
    code, stderr = script_error("train", "--family", "digits_mlp", "--eval-shifts", "sideways", "--out",
                                str(tmp_path / "bad"))
    assert code == 2 and stderr.count("\n") == 1 and "unknown eval shift 'sideways'" in stderr
    assert not (tmp_path / "bad").exists()


def test_evaluation_rows_beyond_the_training_horizon():
    """The rows are generic (any family has a horizon and named shifts): checked on the quick quadratic."""
    family = families.make("quadratic", dim=3, horizon=5)
    rows = evaluation_rows(family, adam(1e-2), jax.random.key(0), tasks=4, horizons=(3,), shifts=("scaled",),
                           lrs=[1e-2, 1e-1])
    assert [(r["shift"], r["horizon_mult"], r["horizon"]) for r in rows] == [("train", 3, 15), ("scaled", 1, 5)]
    for row in rows:
        assert row["tasks"] == 4 and row["adam_lr"] in (1e-2, 1e-1)
        assert row["ratio"] == pytest.approx(row["lopt_base"] / row["adam_base"])
    assert rows[0]["adam_lr"] == 1e-1  # Adam tuned again for the row: the larger rate wins on 15 steps


@pytest.mark.slow
def test_the_default_pes_training_against_tuned_adam(tmp_path):
    out = tmp_path / "digits"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--family", "digits_mlp",
                           "--estimator", "pes", "--quiet", "--out", str(out)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluation = json.loads((out / "summary.json").read_text())["eval"]
    assert {(r["shift"], r["horizon_mult"]) for r in evaluation["rows"]} >= {("train", 4), ("train", 10),
                                                                              ("wider", 1)}
    assert evaluation["ratio"] is not None
    if evaluation["ratio"] > 0.85:  # issue 15's target, not reached yet (the LSTM 0.90, the MLP 0.99 to 1.06)
        pytest.xfail(f"eval.ratio {evaluation['ratio']:.3f} > 0.85: the learned optimizer does not beat tuned Adam")
