"""Run folders and ``scripts/train.py``: what a run writes, bit-for-bit resume, checkpoint round trips, and
bad input that ends in one line, exit code 2 and an untouched folder."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lab.meta.run import RunError, load_meta, train
from lab.meta.train import MetaConfig, meta_params_sha256

ROOT = Path(__file__).resolve().parent.parent
TINY = MetaConfig(meta_steps=8, tasks=4, truncation=3, hidden=8, checkpoint_every=3, eval_tasks=8)
SUMMARY_KEYS = {"family", "optimizer", "estimator", "meta_steps", "seed", "final_meta_loss", "meta_params_sha256",
                "eval"}
EVAL_KEYS = {"horizon", "tasks", "lopt_base", "adam_base", "adam_lr", "ratio"}


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _metrics(run: Path) -> list[dict]:
    """A run's metrics lines without their wall-clock ``time``, the one column two identical runs differ in."""
    return [{k: v for k, v in line.items() if k != "time"}
            for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _script(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "JAX_PLATFORMS": "cpu"})


class _Interrupt(Exception):
    pass


def test_a_run_writes_config_metrics_checkpoints_and_summary(tmp_path):
    summary = train(TINY, tmp_path / "run")
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == TINY.to_json()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))
    assert {"meta_loss", "grad_norm", "skipped_total"} <= set(lines[0])
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [6, 8]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary and SUMMARY_KEYS <= set(summary) and EVAL_KEYS == set(summary["eval"])
    assert summary["eval"]["tasks"] == 8 and summary["eval"]["horizon"] == 50
    assert summary["eval"]["ratio"] == pytest.approx(summary["eval"]["lopt_base"] / summary["eval"]["adam_base"])
    config, meta = load_meta(run)  # checkpoint round trip: the hash of what was saved is the reported one
    assert config == TINY and meta_params_sha256(meta) == summary["meta_params_sha256"]
    assert summary["final_meta_loss"] == lines[-1]["meta_loss"]


def test_same_seed_and_config_give_the_same_numbers(tmp_path):
    a = train(TINY, tmp_path / "a")
    b = train(TINY, tmp_path / "b")
    assert a == b
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


@pytest.mark.parametrize("estimator", ["tbptt", pytest.param("pes", marks=pytest.mark.slow)])  # PES carries more state
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, estimator):
    config = dataclasses.replace(TINY, estimator=estimator)
    whole = train(config, tmp_path / "whole")

    def stop_after_five(step, record):
        if step == 5:
            raise _Interrupt  # like a kill after the step-3 checkpoint and two more logged steps

    with pytest.raises(_Interrupt):
        train(config, tmp_path / "cut", on_step=stop_after_five)
    resumed = train(config, tmp_path / "cut", resume=True)
    assert resumed == whole
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "whole")


def test_resume_can_extend_a_finished_run(tmp_path):
    train(dataclasses.replace(TINY, meta_steps=4), tmp_path / "run")
    longer = train(TINY, tmp_path / "run", resume=True)
    assert longer == train(TINY, tmp_path / "fresh")


def test_a_decayed_meta_lr_runs_its_cosine_and_cannot_be_extended(tmp_path):
    from lab.meta.train import outer_optimizer

    config = dataclasses.replace(TINY, meta_lr=1e-2, meta_lr_final=1e-3)
    assert "meta_lr_final" not in TINY.to_json() and config.to_json()["meta_lr_final"] == 1e-3
    # Adam on a constant gradient steps by its learning rate: the cosine from 1e-2 (step 0) to 1e-3 (the last step).
    tx, params = outer_optimizer(config), {"w": np.zeros(1, np.float32)}
    state, steps = tx.init(params), []
    for _ in range(config.meta_steps + 1):
        update, state = tx.update({"w": np.ones(1, np.float32)}, state, params)
        steps.append(-float(update["w"][0]))
    cosine = [1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + np.cos(np.pi * k / config.meta_steps)) for k in range(9)]
    np.testing.assert_allclose(steps, cosine, rtol=1e-4)
    train(dataclasses.replace(config, meta_steps=4), tmp_path / "run")
    with pytest.raises(RunError, match="meta_steps: 4 in the run, 8 now"):  # the schedule spans the 4 steps
        train(config, tmp_path / "run", resume=True)
    with pytest.raises(RunError, match="meta-lr-final must be positive and at most meta-lr"):
        train(dataclasses.replace(config, meta_lr_final=0.1), tmp_path / "other")


def test_bad_requests_change_nothing(tmp_path):
    run = tmp_path / "run"
    train(TINY, run)
    before = _snapshot(run)
    bad = {
        "different config": (dataclasses.replace(TINY, seed=5), True, "different config"),
        "not empty": (TINY, False, "not empty"),
        "unknown family": (dataclasses.replace(TINY, family="nope"), True, "unknown family 'nope'"),
        "unknown optimizer": (dataclasses.replace(TINY, optimizer="rnn"), True, "unknown optimizer"),
        "no steps": (dataclasses.replace(TINY, meta_steps=0), True, "meta-steps must be positive"),
    }
    for name, (config, resume, message) in bad.items():
        with pytest.raises(RunError, match=message):
            train(config, run, resume=resume)
        assert _snapshot(run) == before, name


def test_script_errors_are_one_line_with_exit_code_2(tmp_path, script_error):
    run = tmp_path / "run"
    train(TINY, run)
    before = _snapshot(run)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cases = [
        (["--family", "nope", "--out", str(tmp_path / "new")], "unknown family"),
        (["--optimizer", "gru", "--out", str(tmp_path / "new")], "unknown optimizer"),
        (["--estimator", "reinforce", "--out", str(tmp_path / "new")], "unknown estimator"),
        (["--meta-steps", "-3", "--out", str(tmp_path / "new")], "--meta-steps: must be positive"),
        (["--meta-steps", "many", "--out", str(tmp_path / "new")], "invalid integer 'many'"),
        (["--out", str(blocker / "run")], "cannot write out folder"),
        (["--out", str(run), "--meta-steps", "8"], "not empty"),
        (["--out", str(run), "--resume", "--seed", "3", "--meta-steps", "8"], "different config"),
    ]
    for args, message in cases:
        code, stderr = script_error("train", *args, "--quiet")
        assert code == 2, (args, stderr)
        assert stderr.count("\n") == 1 and message in stderr, (args, stderr)
        assert "Traceback" not in stderr
    assert _snapshot(run) == before
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_killed_process_resumes_to_identical_meta_params(tmp_path):
    """A real SIGKILL mid-run, then ``--resume``: the final meta-parameters match an uninterrupted run."""
    args = ["--meta-steps", "300", "--checkpoint-every", "40", "--quiet"]
    whole = _script(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *args, "--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints.is_dir() and any(p.name == "80" for p in checkpoints.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "summary.json").exists()  # it really died part-way
    resumed = _script(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert a["meta_params_sha256"] == b["meta_params_sha256"] and a == b


@pytest.mark.slow
@pytest.mark.parametrize("family, bound", [("quadratic", 0.75), ("regression", 0.9)])
def test_default_training_beats_tuned_adam(tmp_path, family, bound):
    """The issue's acceptance figures: the defaults of ``scripts/train.py`` against tuned Adam."""
    result = _script("--family", family, "--out", str(tmp_path / family), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / family / "summary.json").read_text())
    assert summary["eval"]["tasks"] >= 128 and summary["eval"]["ratio"] <= bound


def test_sharded_and_single_device_meta_gradients_agree():
    """The task axis split over 4 (fake CPU) devices gives the meta-gradient of one device."""
    from lab import sharding
    from lab.meta.train import build, init_state

    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py fakes them on the CPU)")
    config = dataclasses.replace(TINY, tasks=8)
    _, estimator, _ = build(config)
    state = init_state(config)
    grad = jax.jit(estimator.grad)
    key = jax.random.key(3)
    single = grad(state.meta, state.estimator_state, key)
    mesh = sharding.task_mesh(4)
    sharded_state = sharding.shard_tasks(state.estimator_state, mesh)
    leaf = jax.tree.leaves(sharded_state)[0]
    assert len(leaf.addressable_shards) == 4 and leaf.addressable_shards[0].data.shape[0] == 2
    multi = grad(sharding.replicate(state.meta, mesh), sharded_state, key)
    for a, b in zip(jax.tree.leaves(single[:2]), jax.tree.leaves(multi[:2])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
