"""Fault injection: what a killed, damaged, raced or mistyped run or report leaves behind, and what the lab then
does (issue 11). Each case either ends in one line on stderr with exit code 2 and folders as they were, or in a
one-line warning and a correct continuation.

Kept fast: one tiny meta-training run is trained once per module and copied for every case; scripts run as
subprocesses only where the point is a real second process (locks, kills) or the absence of a traceback.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lab import cli, io, runs
from lab.meta.run import RunError, load_meta, train
from lab.meta.train import MetaConfig, meta_params_sha256

import scripts_loader as scripts  # tests/scripts_loader.py

ROOT = Path(__file__).resolve().parent.parent
TINY = MetaConfig(meta_steps=8, tasks=4, truncation=3, hidden=8, checkpoint_every=3, eval_tasks=8)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
NO_CACHE = ["--compile-cache", "off"]  # parsing in this process must not switch jax's persistent cache on


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with the SHA-256 of its bytes (what "unchanged" means here)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "time"} for line in runs.read_metrics(run / "metrics.jsonl")]


def _script(name, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def _one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr


_module = scripts.load


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (checkpoints 6 and 8) and its summary; copy it before changing it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    return run, train(TINY, run)


def _copy(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    return run


class _Holder:
    """A second, real process holding a lock (``lab.runs.lock_run`` or ``lock_report``) until killed."""

    def __init__(self, kind: str, folder: Path):
        code = (f"import sys, time; from lab import runs\n"
                f"with runs.{kind}({str(folder)!r}):\n"
                f"    print('held', flush=True); time.sleep(600)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


# -----------------------------------------------------------------------------------------------------------
# One writer per folder
# -----------------------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _Holder("lock_run", run)
    try:
        before = _snapshot(run)
        with pytest.raises(RunError, match=f"in use by process {holder.proc.pid}"):
            train(TINY, run)
        result = _script("train.py", "--meta-steps", "8", "--quiet", "--out", str(run))
        _one_line_error(result, f"in use by process {holder.proc.pid}")
        assert _snapshot(run) == before  # the refused writers wrote nothing
    finally:
        holder.kill()
    assert (run / runs.LOCK_NAME).read_text().strip() == str(holder.proc.pid)  # a stale lock of a dead process
    summary = train(TINY, run)  # ... is taken over, and removed when the run ends
    assert not (run / runs.LOCK_NAME).exists()
    assert runs.read_history(run)[-1]["action"] == "start" and summary["meta_steps"] == 8


def test_a_report_folder_being_written_is_refused_before_any_audit(tmp_path):
    out = tmp_path / "report"
    holder = _Holder("lock_report", out)
    try:
        start = time.time()
        result = _script("probe.py", "--optimizer", "planted:gd", "--tasks", "8", "--out", str(out))
        _one_line_error(result, f"in use by process {holder.proc.pid}")
        assert not out.exists() and time.time() - start < 60
    finally:
        holder.kill()


@pytest.mark.slow
def test_two_train_scripts_started_at_the_same_instant_one_runs_and_the_other_is_refused(tmp_path):
    args = ["--meta-steps", "10", "--tasks", "4", "--truncation", "3", "--eval-tasks", "8", "--quiet"]
    lone = _script("train.py", *args, "--out", str(tmp_path / "lone"))
    assert lone.returncode == 0, lone.stderr
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *args, "--out", str(tmp_path / "pair")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in outcomes) == [0, 2], outcomes
    refused = next(err for rc, err in outcomes if rc == 2)
    assert refused.count("\n") == 1 and ("in use by process" in refused or "not empty" in refused)
    sha = lambda run: json.loads((tmp_path / run / "summary.json").read_text())["meta_params_sha256"]  # noqa: E731
    assert sha("pair") == sha("lone")


# -----------------------------------------------------------------------------------------------------------
# Resume that cannot lie
# -----------------------------------------------------------------------------------------------------------
def _damage(checkpoint: Path, how: str) -> None:
    """Damages one checkpoint folder: ``truncated`` (its largest file cut short), ``flipped`` (64 bytes inverted in
    every data file), ``no_state`` (its ``state/`` gone), ``swapped`` (its ``state/`` replaced by the other
    checkpoint's: every file readable, the numbers silently wrong, as flipped bits in raw data would leave
    them)."""
    state = checkpoint / "state"
    files = sorted((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if how == "truncated":
        files[-1].write_bytes(files[-1].read_bytes()[:40])
    elif how == "flipped":
        for path in (p for p in files if p.parent.name == "d"):
            raw = bytearray(path.read_bytes())
            for i in range(len(raw) // 2 - 32, len(raw) // 2 + 32):
                raw[i] ^= 0xFF
            path.write_bytes(bytes(raw))
    elif how == "no_state":
        shutil.rmtree(state)
    elif how == "swapped":
        other = next(p for p in checkpoint.parent.iterdir() if p.name.isdigit() and p != checkpoint)
        shutil.rmtree(state)
        shutil.copytree(other / "state", state)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "flipped", "no_state", "swapped"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one_and_resumes_bit_identical(trained, tmp_path,
                                                                                           capsys, how):
    run = _copy(trained, tmp_path)
    (run / "summary.json").unlink()  # as if killed after the last checkpoint, before the evaluation
    _damage(run / "checkpoints" / "8", how)
    capsys.readouterr()
    before = _snapshot(run)
    config, meta = load_meta(run)  # a reader falls back too, and writes nothing
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "checkpoint 8" in warning and "using checkpoint 6" in warning, warning
    assert _snapshot(run) == before and meta_params_sha256(meta) != trained[1]["meta_params_sha256"]
    summary = train(TINY, run, resume=True)
    assert summary == trained[1]  # steps 7 and 8 again, from checkpoint 6: bit for bit
    assert _metrics(run) == _metrics(trained[0])
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [6, 8]
    assert "checkpoint 8" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_run_whose_newest_checkpoint_is_then_damaged_resumes_bit_identical(tmp_path):
    """A real SIGKILL mid-run, then the newest checkpoint damaged, then ``--resume``: the run falls back to the
    older checkpoint with a warning and ends with the meta-parameters of an uninterrupted run."""
    args = ["--meta-steps", "300", "--checkpoint-every", "40", "--quiet"]
    whole = _script("train.py", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *args, "--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    checkpoints = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints.is_dir() and (checkpoints / "120").is_dir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "summary.json").exists()
    newest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    _damage(checkpoints / str(newest), "truncated")
    resumed = _script("train.py", *args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {newest}" in resumed.stderr and "damaged; using checkpoint" in resumed.stderr
    a, b = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("whole", "cut"))
    assert a["meta_params_sha256"] == b["meta_params_sha256"] and a == b


def test_no_intact_checkpoint_is_refused_and_changes_nothing(trained, tmp_path):
    run = _copy(trained, tmp_path)
    _damage(run / "checkpoints" / "6", "swapped")
    _damage(run / "checkpoints" / "8", "truncated")
    before = _snapshot(run)
    with pytest.raises(RunError, match="no intact checkpoint.*checkpoint 8.*checkpoint 6: its contents do not match"):
        load_meta(run)
    with pytest.raises(RunError, match="no intact checkpoint"):
        train(TINY, run, resume=True)
    assert _snapshot(run) == before
    _one_line_error(_script("probe.py", "--optimizer", str(run), "--out", str(tmp_path / "rep")),
                    "no intact checkpoint")
    assert _snapshot(run) == before and not (tmp_path / "rep").exists()


def test_a_torn_last_metrics_line_is_cut_back_and_a_damaged_middle_line_refused(trained, tmp_path):
    run = _copy(trained, tmp_path)
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "meta_lo')  # killed mid-line
    assert train(TINY, run, resume=True) == trained[1]
    assert _metrics(run) == _metrics(trained[0])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = _snapshot(run)
    with pytest.raises(RunError, match="metrics.jsonl line 4 is damaged"):
        train(TINY, run, resume=True)
    assert _snapshot(run) == before


def test_a_shorter_resume_is_refused_and_a_longer_one_is_recorded(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    with pytest.raises(RunError, match="a shorter run would relabel"):
        train(dataclasses.replace(TINY, meta_steps=5), run, resume=True)
    assert _snapshot(run) == before
    capsys.readouterr()
    longer = train(dataclasses.replace(TINY, meta_steps=10), run, resume=True)
    assert "extending" in capsys.readouterr().err
    history = runs.read_history(run)
    assert [h["action"] for h in history] == ["start", "extend"]
    assert history[-1]["extended_from"] == 8 and history[-1]["from_step"] == 8 and history[-1]["steps"] == 10
    assert longer["meta_steps"] == 10 and json.loads((run / "config.json").read_text())["meta_steps"] == 10
    assert [line["step"] for line in _metrics(run)] == list(range(1, 11))


# -----------------------------------------------------------------------------------------------------------
# Damaged configs, input folders, numbers
# -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "holds a JSON list"),
    (b"\xff\xfe\x00{", "not UTF-8"),
    (b'{"family": "quadratic", "tasks": 4', "not JSON"),
    (b'{"family": "quadratic", "colour": "red"}', "unknown field 'colour'"),
    (b'{"family": "quadratic", "tasks": "many"}', "field 'tasks' must be an integer"),
    (b'{"family": "quadratic", "meta_lr": NaN}', "NaN is not JSON"),
    (b'{"family": "quadratic", "seed": 9223372036854775808}', "seed must be from 0"),
])
def test_a_damaged_config_names_the_file_and_the_field(trained, tmp_path, content, message):
    run = _copy(trained, tmp_path)
    (run / "config.json").write_bytes(content)
    with pytest.raises(RunError, match="config.json") as e:
        load_meta(run)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_probe_py_on_a_damaged_config_or_a_run_without_checkpoints_is_one_line_and_writes_nothing(trained, tmp_path):
    run = _copy(trained, tmp_path)
    (run / "config.json").write_text('{"family": "quadratic", "tasks": "many"}')
    _one_line_error(_script("probe.py", "--optimizer", str(run), "--out", str(tmp_path / "a")),
                    "config.json", "'tasks'")
    fresh = tmp_path / "untrained"
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps(TINY.to_json()))
    before = _snapshot(fresh)
    probe = _module("probe")
    with pytest.raises(SystemExit) as e:
        probe.parse(["--optimizer", str(fresh), "--out", str(tmp_path / "b"), *NO_CACHE])
    assert e.value.code == 2
    with pytest.raises(RunError, match="no checkpoint"):
        load_meta(fresh)
    assert _snapshot(fresh) == before and not (fresh / "checkpoints").exists()  # nothing written into an input
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_reading_a_run_writes_nothing_into_it(trained):
    before = _snapshot(trained[0])
    load_meta(trained[0])
    assert _snapshot(trained[0]) == before and not (trained[0] / runs.LOCK_NAME).exists()


def _parse_fails(module, argv, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        module.parse([*argv, *NO_CACHE])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_numbers_are_checked_finite_and_in_range_before_anything_is_written(tmp_path, capsys):
    train_py, icl_py, probe_py = _module("train"), _module("icl"), _module("probe")
    out = ["--out", str(tmp_path / "new")]
    for argv, needle in [(["--seed", str(2 ** 63)], "out of range"), (["--seed", "-1"], "out of range"),
                         (["--meta-lr", "inf"], "not a finite number"), (["--meta-lr", "nan"], "not a finite"),
                         (["--meta-lr", "0"], "out of range"), (["--loss-floor=-inf"], "not a finite number"),
                         (["--loss-floor", "1"], "out of range"), (["--tasks", "0"], "must be positive"),
                         (["--tasks", str(10 ** 9)], "at most"), (["--meta-steps", "1e3"], "invalid integer")]:
        _parse_fails(train_py, argv + out, capsys, needle)
    config, *_ = train_py.parse(["--loss-floor", "-1e3", *out, *NO_CACHE])  # a negative number is a value
    assert config.loss_floor == -1000.0
    for argv, needle in [(["--noise", "inf", "--layers", "1"], "not a finite number"),
                         (["--context", "1000000", "--layers", "1"], "of memory, more than"),
                         (["--seed", str(2 ** 63)], "out of range")]:
        _parse_fails(icl_py, argv + out, capsys, needle)
    _parse_fails(probe_py, ["--optimizer", "planted:gd", "--seed", str(2 ** 64), *out], capsys, "out of range")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(TINY, meta_lr=float("inf")).validate()
    with pytest.raises(ValueError, match="seed must be"):
        dataclasses.replace(TINY, seed=2 ** 63).validate()
    result = _script("train.py", "--seed", str(2 ** 63), "--out", str(tmp_path / "new"))
    _one_line_error(result, "--seed")
    assert not (tmp_path / "new").exists()


def test_json_is_strict_everywhere(tmp_path):
    io.write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: 1 / 0) == \
        {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_metrics_lines_are_strict_json_with_a_time_column(trained):
    for line in (trained[0] / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line, parse_constant=lambda c: 1 / 0)
        assert isinstance(record["time"], float) and record["time"] > 1.6e9


# -----------------------------------------------------------------------------------------------------------
# Outputs that cannot be written, reports written as a unit
# -----------------------------------------------------------------------------------------------------------
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _parse_fails(_module("probe"), ["--optimizer", "planted:gd", "--out", str(blocker / "rep")], capsys,
                 "is not a folder")
    _parse_fails(_module("zoo"), ["--out", str(blocker)], capsys, "not a folder")
    _parse_fails(_module("icl"), ["--layers", "1", "--out", str(blocker)], capsys, "not a folder")
    example = _module("example_experiment")
    with pytest.raises(SystemExit) as e:
        example.main(["--out", str(blocker), *NO_CACHE])
    assert e.value.code == 2 and "not a folder" in capsys.readouterr().err
    assert cli.writable_file(tmp_path) and cli.writable_file(blocker / "x.json")
    if os.geteuid() != 0:  # root writes into read-only folders, so the permission case only holds for users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "cannot be written" in cli.writable_folder(locked / "rep")
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="'notes.txt', which is not part of this report"):
        io.write_folder_atomic(folder, {"report.json": "{}", "report.html": "<p>"})
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_write_error_during_a_run_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import lab.meta.run as meta_run

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(meta_run, "write_json_atomic", full)  # the disk fills up as the run writes
    train_py = _module("train")
    code = train_py.main(["--meta-steps", "4", "--tasks", "4", "--truncation", "3", "--quiet", "--out",
                          str(tmp_path / "run"), *NO_CACHE])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "--resume" in err, err
    assert not (tmp_path / "run" / runs.LOCK_NAME).exists()  # the lock went with the writer


def _pair(seed: int) -> dict:
    return {"report.json": json.dumps({"seed": seed}), "report.html": f"<p>seed {seed}</p>" * 20000}


def _consistent(folder: Path) -> int:
    seed = json.loads((folder / "report.json").read_text())["seed"]
    assert (folder / "report.html").read_text() == _pair(seed)["report.html"]
    return seed


def test_a_report_killed_between_its_renames_is_restored_whole(tmp_path, monkeypatch):
    folder = tmp_path / "rep"
    io.write_folder_atomic(folder, _pair(1))
    renames = []
    real = os.rename

    def dies_after_the_first(a, b):
        if renames:
            raise KeyboardInterrupt  # the kill, between moving the old report aside and moving the new one in
        renames.append((a, b))
        real(a, b)

    monkeypatch.setattr(io.os, "rename", dies_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        io.write_folder_atomic(folder, _pair(2), exchange=False)
    monkeypatch.undo()
    assert not folder.exists() and list(tmp_path.glob(".rep.old-*"))
    io.clean_folder_leftovers(folder)  # the next writer, holding the lock
    assert _consistent(folder) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    io.write_folder_atomic(folder, _pair(3))  # the atomic exchange where the system has it
    assert _consistent(folder) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_a_report_writer_killed_at_random_never_leaves_a_mixed_report(tmp_path):
    """A real process rewriting a report in a loop, SIGKILLed at random moments: after each kill the next
    writer's clean-up leaves one whole report (both files of one write) and no leftovers."""
    folder = tmp_path / "rep"
    code = ("import json, sys; from lab import io\n"
            "seed = int(sys.argv[1])\n"
            "html = lambda s: f'<p>seed {s}</p>' * 20000\n"
            "print('go', flush=True)\n"
            "while True:\n"
            "    seed += 1\n"
            f"    io.write_folder_atomic({str(folder)!r}, {{'report.json': json.dumps({{'seed': seed}}), "
            "'report.html': html(seed)}, exchange=seed % 2 == 0)\n")
    rng = np.random.default_rng(0)
    seen = set()
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", code, str(round_ * 100_000)], stdout=subprocess.PIPE,
                                text=True, env=ENV)
        assert proc.stdout.readline().strip() == "go"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        io.clean_folder_leftovers(folder)
        if folder.exists():
            seen.add(_consistent(folder))
        assert [p.name for p in tmp_path.iterdir()] in ([], ["rep"])
    assert seen  # the writer got through at least one whole report


def test_a_commit_killed_before_its_marker_is_dropped_and_after_it_is_finished(tmp_path):
    folder = tmp_path / "zoo"
    (folder / "runs").mkdir(parents=True)
    io.commit_files(folder, {"zoo.json": '{"seed": 1}', "report.html": "seed 1"})
    stage = folder / ".commit-99999"  # killed while staging: no marker
    stage.mkdir()
    (stage / "zoo.json").write_text('{"seed": 2}')
    io.recover_commits(folder)
    assert (folder / "zoo.json").read_text() == '{"seed": 1}' and not stage.exists()
    stage.mkdir()  # killed after the marker, one file moved
    (stage / "report.html").write_text("seed 3")
    (stage / "COMMITTED").write_text("zoo.json\nreport.html\n")
    (folder / "zoo.json").write_text('{"seed": 3}')
    io.recover_commits(folder)
    assert (folder / "report.html").read_text() == "seed 3" and (folder / "zoo.json").read_text() == '{"seed": 3}'
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "runs", "zoo.json"]


def test_stray_temporaries_of_a_killed_writer_are_removed_by_the_next_run(trained, tmp_path):
    run = _copy(trained, tmp_path)
    (run / "summary.json").unlink()
    (run / ".summary.json.abc123.tmp").write_text("half")
    train(TINY, run, resume=True)
    assert not list(run.glob(".*.tmp")) and not (run / runs.LOCK_NAME).exists()


# -----------------------------------------------------------------------------------------------------------
# Verdicts no surer than their evidence; empty zoos; help
# -----------------------------------------------------------------------------------------------------------
def test_a_failed_deciding_probe_lowers_the_confidence_or_leaves_the_class_unidentified():
    from probes.verdict import ProbeFailure, _at, temper

    failed = {"cues": ProbeFailure("FloatingPointError: overflow"),
              "gradient_regression": ProbeFailure("LinAlgError: singular matrix")}
    robust = _at("late", "robust", "loss", 0.97, "nothing separated its pursued objective from the base")
    label, pursued, confidence, evidence = temper(robust, failed)
    assert (label, pursued, confidence) == ("unidentified", None, 0.0)
    assert "cues (FloatingPointError: overflow)" in evidence and "gradient_regression" in evidence
    proxy = _at("affordance", "proxy_side_effect", "wipes", 0.9, "on spill_open it spills")
    label, pursued, confidence, evidence = temper(proxy, failed)  # cues was read before the affordance
    assert (label, pursued) == ("proxy_side_effect", "wipes") and confidence == pytest.approx(0.6)
    assert "not checked: cues" in evidence and "gradient_regression" not in evidence
    assert temper(_at("cues", "deceptive", "other", 0.8, "switches"), failed)[2] == 0.8  # nothing failed before


def test_an_audit_whose_regression_fails_is_not_called_robust(monkeypatch):
    from probes import calibration, subject
    from probes.verdict import audit
    from probes.zoo import planted

    optimizer, family = planted.build("gd")
    only_gate = audit(optimizer, family, tasks=8, probes=("competence",))
    # no regression: no fit, a raw score of 0 (the confidence is that score through the calibration map)
    assert only_gate.label == "robust" and only_gate.raw_confidence == 0.0
    assert only_gate.confidence == pytest.approx(calibration.calibrated("robust", 0.0))

    def fails(subject):
        raise FloatingPointError("overflow in the regression")

    monkeypatch.setitem(subject.PROBES, "gradient_regression", fails)
    seen = []
    verdict = audit(optimizer, family, tasks=8, probes=("competence", "gradient_regression"),
                    on_probe=lambda name, done, total: seen.append((name, done, total)))
    assert verdict.label == "unidentified" and verdict.confidence == 0.0
    assert "gradient_regression (FloatingPointError: overflow in the regression) failed" in verdict.evidence
    assert seen == [("competence", 0, 2), ("gradient_regression", 1, 2)]


def test_an_empty_zoo_is_refused(tmp_path, capsys):
    zoo = _module("zoo")
    out = ["--out", str(tmp_path / "z")]
    _parse_fails(zoo, ["--scenarios", ",", *out], capsys, "--scenarios names nothing")
    _parse_fails(zoo, ["--planted", "", *out], capsys, "--planted names nothing")
    assert zoo.main(["--scenarios", "none", "--planted", "none", "--no-incontext", *out, *NO_CACHE]) == 2
    assert "nothing to run" in capsys.readouterr().err and not (tmp_path / "z").exists()
    _parse_fails(_module("probe"), ["--zoo", "planted", "--members", ",", *out], capsys, "names no planted member")


def test_every_flag_has_help_with_its_default_and_probe_help_lists_members_and_probes(monkeypatch, capsys):
    parsers = []
    real = cli.Parser.parse_known_args

    def record(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(cli.Parser, "parse_known_args", record)
    for name in ("train", "probe", "zoo", "icl"):
        with pytest.raises(SystemExit):
            _module(name).parse([])
    with pytest.raises(SystemExit):
        _module("example_experiment").main([])
    monkeypatch.setattr(cli.Parser, "parse_known_args", real)
    assert len(parsers) == 5
    for parser in parsers:
        for action in parser._actions:
            assert action.help, (parser.prog, action.option_strings)
        text = parser.format_help()
        assert "(default:" in text, parser.prog
        # a switch's default is its absence: no "--no-incontext ... (default: True)"
        assert "(default: True)" not in text and "(default: False)" not in text, parser.prog
    with pytest.raises(SystemExit):
        _module("probe").parse(["--help"])
    text = capsys.readouterr().out
    assert "planted members" in text and "gd_cookies_capped" in text and "distilled_wipes" in text
    assert "gradient_regression" in text and "representation" in text
