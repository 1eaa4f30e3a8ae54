"""Meta-training across processes with ``jax.distributed`` (README, "Meta-training across processes").

``scripts/train.py`` is started as two local processes with two CPU devices each (``--xla_force_host_platform
_device_count=2``), the task axis sharded over all four devices, and once as one process over four devices with
the same seed: the meta-gradients of every step (``grad_norm``), the meta-losses and the final meta-parameters
agree to 1e-5 relative (the two runs sum the tasks' contributions in another order: gloo's all-reduce between
processes, XLA's within one). Process 0 alone writes the folder; the other process reports the checksum of the
same meta-parameters; a resumed two-process run restores the checkpoint on every process and ends where the
one-process run of that length does. The first process takes its settings from flags, the second from
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lab.meta.run import load_meta

ROOT = Path(__file__).resolve().parent.parent
ARGS = ("--family", "quadratic", "--estimator", "pes", "--tasks", "8", "--truncation", "3", "--eval-tasks", "4",
        "--checkpoint-every", "4", "--quiet")


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _command(out: Path, steps: int, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *ARGS, "--meta-steps", str(steps), "--out", str(out),
            *extra]


def _two_processes(out: Path, steps: int, *extra) -> tuple[dict, dict]:
    """A run of two processes with two devices each; the last stdout line of each (an eval record, a checksum)."""
    address = f"localhost:{_free_port()}"
    first = subprocess.Popen(_command(out, steps, *extra, "--coordinator-address", address, "--num-processes", "2",
                                      "--process-id", "0"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(2))
    second = subprocess.Popen(_command(out, steps, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1"))
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (stdout, stderr) in zip((first, second), outputs):
        assert proc.returncode == 0, stderr[-3000:]
    return tuple(json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs)


def _one_process(out: Path, steps: int) -> dict:
    proc = subprocess.run(_command(out, steps), capture_output=True, text=True, env=_env(4), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _metrics(run: Path) -> np.ndarray:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, len(lines) + 1))
    return np.asarray([[x["meta_loss"], x["grad_norm"]] for x in lines])


def _assert_same_meta(a: Path, b: Path) -> None:
    (_, meta_a), (_, meta_b) = load_meta(a), load_meta(b)
    for x, y in zip(jax.tree.leaves(meta_a), jax.tree.leaves(meta_b), strict=True):
        assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(x), np.linalg.norm(x - y) / np.linalg.norm(x)


@pytest.mark.slow
def test_two_processes_train_as_one_process_over_the_same_four_devices(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    eval_two, follower = _two_processes(two, 8)
    eval_one = _one_process(one, 8)

    summary = json.loads((two / "summary.json").read_text())
    assert follower == {"process": 1, "meta_params_sha256": summary["meta_params_sha256"]}  # the same parameters
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "config.json", "history.jsonl", "metrics.jsonl",
                                                     "summary.json"]  # written once: no second history line, no lock
    assert len((two / "history.jsonl").read_text().splitlines()) == 1
    np.testing.assert_allclose(_metrics(two), _metrics(one), rtol=1e-5)  # meta-loss and meta-gradient, every step
    _assert_same_meta(one, two)
    assert eval_two["lopt_base"] == pytest.approx(eval_one["lopt_base"], rel=1e-4)

    # Resumed over two processes: both restore checkpoint 8 from the folder and go on to 12 steps.
    _, follower = _two_processes(two, 12, "--resume")
    _one_process(tmp_path / "one12", 12)
    _assert_same_meta(tmp_path / "one12", two)
    assert follower["meta_params_sha256"] == json.loads((two / "summary.json").read_text())["meta_params_sha256"]
    assert [json.loads(x)["action"] for x in (two / "history.jsonl").read_text().splitlines()] == ["start", "extend"]


def test_a_bad_process_setting_is_one_line(tmp_path):
    proc = subprocess.run(_command(tmp_path / "run", 2, "--num-processes", "2", "--process-id", "2",
                                   "--coordinator-address", f"localhost:{_free_port()}"),
                          capture_output=True, text=True, env=_env(1), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: jax.distributed.initialize failed"), proc.stderr
    assert not (tmp_path / "run").exists()
