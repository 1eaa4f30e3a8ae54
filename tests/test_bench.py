"""scripts/bench.py: a quick run writes every measurement as a positive finite number; bad input is a
one-line error with exit code 2. The script runs in a subprocess (one CPU device there, not conftest's four)."""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _positive(value, name):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} = {value!r}"
    assert math.isfinite(value) and value > 0, f"{name} = {value!r}"


def test_quick_run_writes_all_measurements(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "meta-training" in proc.stdout  # the table
    data = json.loads(out.read_text())

    assert data["quick"] is True
    machine = data["machine"]
    for key in ("devices", "device_count", "jax_version", "platform", "cpu_count"):
        assert machine[key], key
    assert machine["device_count"] == len(machine["devices"])

    inner = data["lopt_step_over_adam"]
    for kind in ("mlp", "lstm"):
        for key in ("lopt_us", "adam_us", "ratio"):
            _positive(inner[kind][key], f"{kind}.{key}")
            _positive(inner[kind]["in_scan"][key], f"{kind}.in_scan.{key}")
        assert math.isclose(inner[kind]["ratio"], inner[kind]["lopt_us"] / inner[kind]["adam_us"], rel_tol=1e-9)

    meta = data["meta_training"]
    for key in ("meta_steps_per_s", "inner_steps_per_s", "seconds", "compile_s"):
        _positive(meta[key], key)
    config = meta["config"]
    assert math.isclose(meta["inner_steps_per_s"],
                        meta["meta_steps_per_s"] * config["tasks"] * config["truncation"], rel_tol=1e-9)

    flops = data["flops"]
    for key in ("flops_per_meta_step", "gflops_per_s", "seconds_per_meta_step"):
        _positive(flops[key], key)
    # no peak was given and none is guessed
    assert flops["peak_gflops_per_s"] is None and flops["fraction_of_peak"] is None


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args in (["--rounds", "0"], ["--no-such-flag"], ["--out", str(tmp_path / "missing" / "bench.json")]):
        proc = _run(*args, timeout=60)
        assert proc.returncode == 2, (args, proc.returncode)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bench.py: error:"), (args, proc.stderr)
        assert not (tmp_path / "missing").exists()
