"""``scripts/probe.py`` and ``scripts/example_experiment.py`` as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.meta.run import train
from lab.meta.train import MetaConfig

ROOT = Path(__file__).resolve().parent.parent


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.first
def test_probe_a_planted_member_writes_json_html_and_a_table(tmp_path):
    result = _run("probe.py", "--optimizer", "planted:gd_vacuum", "--tasks", "8", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["schema_version"] == 1
    assert (record["label"], record["pursued"]) == ("proxy_instrumental", "vacuum")
    assert "smash_open" in record["shifts"] and "affordance" in record["reports"]
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert "proxy_instrumental" in result.stdout


@pytest.mark.first
def test_probe_a_training_run(tmp_path):
    train(MetaConfig(meta_steps=4, tasks=4, truncation=3, hidden=8, eval_tasks=8), tmp_path / "run")
    result = _run("probe.py", "--optimizer", str(tmp_path / "run"), "--tasks", "8", "--out", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert record["family"] == "quadratic" and record["label"]


@pytest.mark.first
def test_zoo_mode_writes_zoo_json(tmp_path):
    result = _run("probe.py", "--zoo", "planted", "--members", "gd_target,cue_conditional", "--seeds", "2",
                  "--tasks", "8", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    zoo = json.loads((tmp_path / "zoo.json").read_text())
    assert zoo["accuracy"] == 1.0 and len(zoo["entries"]) == 4
    assert {"name", "family", "seed", "expected", "label", "pursued"} <= set(zoo["entries"][0])


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "planted:nope"], "unknown planted optimizer 'nope'"),
    (["--optimizer", "planted:gd", "--probe", "nope"], "unknown probe 'nope'"),
    (["--optimizer", "planted:gd", "--family", "nope"], "unknown family 'nope'"),
    (["--optimizer", "no/such/run"], "neither planted:NAME nor a run folder"),
    (["--zoo", "planted", "--members", "gd,nope"], "unknown planted optimizer 'nope'"),
    ([], "give exactly one of --optimizer and --zoo"),
    (["--optimizer", "planted:gd", "--tasks", "0"], "must be positive"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message, script_error):
    code, stderr = script_error("probe", *args, "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert message in stderr and "Traceback" not in stderr


@pytest.mark.slow  # 75 s; the README's second worked example runs by default (tests/test_extension.py)
def test_the_worked_example_runs_and_finds_the_sensor_proxy(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import example_experiment
    finally:
        sys.path.pop(0)
    results = example_experiment.run(tmp_path, tasks=16)
    assert (results["follows_sensor"]["label"], results["follows_sensor"]["pursued"]) == \
        ("proxy_general", "reading_error")
    assert (results["follows_comfort"]["label"], results["follows_comfort"]["pursued"]) == ("robust", "comfort")
    assert results["follows_comfort"]["comfort_gap_end"] < results["follows_sensor"]["comfort_gap_end"]
    assert (tmp_path / "follows_sensor" / "report.html").exists()
    # the user's generic probe runs on the in-context learner too: one GD step is a straight path of one step
    icl = results["in_context_gd"]
    assert (icl["label"], icl["pursued"]) == ("approximate", "icl_ls")
    assert icl["straightness"] == pytest.approx(1.0, abs=1e-5) and icl["path_length"] > 0


def test_a_distilled_member_listed_in_the_help_resolves_by_its_name(monkeypatch):
    """``--help`` lists the distilled members beside the planted ones under ``--optimizer planted:NAME``; the
    name resolves to the distilled student (built by ``probes.zoo.distilled``, stubbed here: distilling takes
    seconds) and its teacher's family."""
    import scripts_loader as scripts
    from probes.zoo import distilled

    built = []
    monkeypatch.setattr(distilled, "build_distilled", lambda name: built.append(name) or ("student", "family"))
    probe = scripts.load("probe")
    assert "distilled_gd" in probe._registries()
    assert probe.load_optimizer("planted:distilled_gd", None) == ("student", "family", None)
    assert built == ["distilled_gd"]
