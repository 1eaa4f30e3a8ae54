"""The benchmark's yardsticks and the script.

- ``lab.meta.reference``: the hand-written meta-step gives the library's meta-losses and meta-parameters.
- ``lab.flops``: closed forms (a matmul, a scan of matmuls) and agreement with XLA's own count of the
  unrolled program.
- ``scripts/bench.py``: bad input is a one-line error with exit code 2; a quick run (slow: it compiles a dozen
  programs) writes every measurement as a finite number. The script runs in a subprocess (one CPU device
  there, not conftest's four).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import flops
from lab.meta import reference
from lab.meta.train import MetaConfig, init_state, make_meta_step

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _positive(value, name):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} = {value!r}"
    assert math.isfinite(value) and value > 0, f"{name} = {value!r}"


def test_reference_meta_step_is_the_same_math_as_the_library():
    """Horizon 3 < truncation 4: resets inside a truncation, and tasks reset at different steps."""
    from lab import families

    config = MetaConfig(tasks=6, truncation=4)
    family = families.make("quadratic", horizon=3, dim=5)
    state = init_state(config, family)
    library = jax.jit(make_meta_step(config, family))
    ref = jax.jit(reference.make_reference_meta_step(6, 4, horizon=3, dim=5))
    args = reference.from_library_state(state)
    for _ in range(4):
        state, metrics = library(state)
        *args, loss = ref(*args)
        np.testing.assert_allclose(float(loss), float(metrics["meta_loss"]), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(state.meta), jax.tree.leaves(args[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert np.asarray(state.estimator_state.step).tolist() == np.asarray(args[2][4]).tolist()


def test_flop_count_of_a_matmul_and_of_a_scan_of_matmuls():
    a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert flops.count(lambda a, b: a @ b, a, b).flops == 2 * 3 * 5 * 7
    x = jnp.ones((4, 4))

    def loop(x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ x) + 1.0, None), x, None, length=6)[0]

    counted = flops.count(loop, x)
    assert counted.flops == 6 * (2 * 4 * 4 * 4 + 16) and counted.transcendentals == 6 * 16
    plain = flops.xla_flops(jax.jit(loop).lower(x).compile())
    unrolled = flops.xla_unrolled(loop, x)
    assert unrolled == pytest.approx(counted.flops, rel=0.05)  # XLA agrees once nothing is a loop
    assert plain < counted.flops / 3  # what the plain cost analysis misses: it visits the body once


def test_bad_arguments_are_one_line_errors(tmp_path, script_error):
    for args in (["--rounds", "0"], ["--no-such-flag"], ["--out", str(tmp_path / "missing" / "bench.json")]):
        code, stderr = script_error("bench", *args)
        assert code == 2, (args, code)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bench.py: error:"), (args, stderr)
        assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_quick_run_writes_all_measurements(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "meta-step" in proc.stdout  # the table
    data = json.loads(out.read_text())
    assert data["quick"] is True
    machine = data["machine"]
    for key in ("devices", "device_count", "jax_version", "platform", "cpu_count"):
        assert machine[key], key
    _positive(data["peak"]["gflops_per_s"], "peak")
    for inner in data["inner_step"]:
        for kind in ("mlp", "lstm"):
            for key in ("lopt_us", "adam_us", "ratio"):
                _positive(inner[kind][key], f"{kind}.{key}")
                _positive(inner[kind]["in_scan"][key], f"{kind}.in_scan.{key}")
    for row in data["meta_step"]:
        for key in ("library_ms", "reference_ms", "ratio", "library_compile_s", "reference_compile_s"):
            _positive(row[key], key)
        assert row["meta_loss_max_relative_difference"] < 1e-4
    check = data["flops"]["check"]
    assert 0.7 < check["counted_over_xla_unrolled"] < 1.3 and check["xla_plain"] < check["counted"]
    for row in data["flops"]["rows"]:
        _positive(row["percent_of_peak"], "percent_of_peak")
    for row in data["remat"]:
        assert row["temp_bytes_remat"] <= row["temp_bytes_plain"]
    _positive(data["host_sync"]["every_step_over_per_block"], "host_sync")
    assert data["scaling"]["devices"][0]["devices"] == 2
    for rows in data["scaling"].values():
        for row in rows:
            _positive(row["meta_steps_per_s"], "meta_steps_per_s")
    assert [row["tasks"] for row in data["digits"]] == [4] and data["digits"][0]["family"] == "digits_mlp"
    _positive(data["digits"][0]["meta_steps_per_s"], "digits meta_steps_per_s")
