"""The scenario zoo: cached meta-training runs, the jobs runner, and ``scripts/zoo.py`` as a user runs it."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from probes.zoo import jobs as zoo, scenarios, workers
from probes.zoo.entry import Entry
from probes.zoo.scenarios import Scenario

ROOT = Path(__file__).resolve().parent.parent
TINY = {"meta_steps": 12, "tasks": 4, "hidden": 8, "eval_tasks": 8, "checkpoint_every": 6}


def _zoo(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "zoo.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_every_scenario_names_a_known_class_family_and_quantity():
    from lab import families
    from probes.verdict import CLASSES

    from probes.zoo import incontext

    # The zoo's hypotheses cover the seed's classes; the emergent approximate members are a narrow learned
    # optimizer and an in-context learner (the regression scenario, first hypothesised approximate, was settled as
    # a general proxy by its audits).
    learned = {s.expected for s in scenarios.SCENARIOS.values()}
    assert learned >= {"robust", "approximate", "proxy_side_effect", "proxy_instrumental", "proxy_general",
                       "suboptimality", "deceptive"}
    assert "approximate" in {m.expected for m in incontext.suite(quick=False)}
    for s in scenarios.SCENARIOS.values():
        assert s.expected in CLASSES
        assert s.pursued in s.family().mechanisms()
        s.meta_config(0).validate()
        s.meta_config(0, quick=True).validate()
    # honesty: every scenario is audited on the family whose base its meta-trainer scored, except the model
    # organism, meta-trained on purpose on a cue-keyed objective and audited on the plain cue family
    assert [s.name for s in scenarios.SCENARIOS.values() if s.audit_family not in (None, s.train_family)] == ["organism"]
    assert families.make("cues").base == "target" and families.make("cues_organism").base == "keyed"


def test_run_folders_are_named_by_config_and_a_finished_run_is_reused(tmp_path):
    scenario = Scenario("tiny", "quadratic", "robust", "loss", config=TINY)
    a, b = scenario.meta_config(0), scenario.meta_config(1)
    assert scenarios.run_folder(tmp_path, scenario, a) != scenarios.run_folder(tmp_path, scenario, b)
    assert scenarios.config_hash(a) == scenarios.config_hash(scenario.meta_config(0))
    _, _, first = scenarios.meta_train(scenario, 0, tmp_path)
    _, _, again = scenarios.meta_train(scenario, 0, tmp_path)
    assert not first["reused"] and again["reused"]
    assert again["meta_params_sha256"] == first["meta_params_sha256"]
    assert Path(first["run"]) == scenarios.run_folder(tmp_path, scenario, a)
    assert json.loads((Path(first["run"]) / "config.json").read_text()) == a.to_json()


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_is_resumed_to_the_same_result(tmp_path):
    scenario = Scenario("tiny", "quadratic", "robust", "loss", config=TINY)

    def kill_after_8(step, record):
        if step == 8:
            raise _Interrupt  # like a kill after the step-6 checkpoint and two more logged steps

    with pytest.raises(_Interrupt):
        scenarios.meta_train(scenario, 0, tmp_path / "zoo", on_step=kill_after_8)
    _, _, resumed = scenarios.meta_train(scenario, 0, tmp_path / "zoo")
    _, _, whole = scenarios.meta_train(scenario, 0, tmp_path / "reference")
    assert not resumed["reused"]
    assert resumed["meta_params_sha256"] == whole["meta_params_sha256"]


def _entry(name="a", kind="learned", expected="robust", expected_pursued="loss", label="robust", pursued="loss",
           seed=0, **details):
    return Entry(name, kind, "quadratic", seed, expected, expected_pursued, label, pursued, 0.5, "because",
                 details)


def test_entry_is_correct_when_class_and_expected_pursued_quantity_match():
    assert _entry().correct
    assert not _entry(label="proxy_general").correct
    assert not _entry(pursued="norm").correct                               # the wrong pursued quantity
    assert _entry(expected_pursued=None, pursued="norm").correct            # None: any pursued quantity
    assert _entry(expected="not_optimizing", label="not_optimizing", expected_pursued=None, pursued=None).correct
    assert not _entry(expected_pursued=None, label="proxy_general").correct  # the class must still match


def test_entry_json_has_the_zoo_json_keys_with_details_flattened():
    data = _entry(expected_pursued="norm", run="runs/a", reused=True, extra={"implied_ridge": {"probe": "X"}}).to_json()
    assert data == {"name": "a", "kind": "learned", "family": "quadratic", "seed": 0, "expected": "robust",
                    "label": "robust", "pursued": "loss", "expected_pursued": "norm", "correct": False,
                    "confidence": 0.5, "evidence": "because", "run": "runs/a", "reused": True,
                    "extra": {"implied_ridge": {"probe": "X"}}}
    json.dumps(data)
    with pytest.raises(ValueError, match="own keys"):
        _entry(correct=True)
    with pytest.raises(ValueError, match="unknown entry kind"):
        _entry(kind="scenario")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _entry().label = "robust"


def test_label_distribution_counts_labels_and_held_hypotheses():
    entries = [_entry(), _entry(label="proxy_general", seed=1), _entry("gd", kind="planted"),
               _entry("lsa1", kind="incontext", expected="approximate", label="approximate", expected_pursued=None)]
    assert scenarios.label_distribution(entries) == {
        "a": {"expected": "robust", "labels": {"robust": 1, "proxy_general": 1}, "held": 1, "seeds": 2},
        "lsa1": {"expected": "approximate", "labels": {"approximate": 1}, "held": 1, "seeds": 1}}


def test_run_jobs_returns_results_in_job_order_in_process_and_in_workers():
    jobs = [(pow, (2, k)) for k in range(5)]
    seen = []
    assert workers.run_jobs(jobs, 1, lambda i, r: seen.append(i)) == [1, 2, 4, 8, 16] and seen == list(range(5))
    assert workers.run_jobs(jobs, 2) == [1, 2, 4, 8, 16]


def test_run_jobs_replaces_a_worker_after_its_share_of_jobs():
    import os

    pids = workers.run_jobs([(os.getpid, ())] * 4, 1, jobs_per_worker=2)
    assert os.getpid() not in pids and len(set(pids)) == 2 and pids[0] == pids[1] != pids[2] == pids[3]


def test_the_schedule_keeps_a_worker_on_its_group_and_then_takes_the_largest_free_one():
    schedule = workers.Schedule(["a", "b", "a", "b", "c", "c", "c"], 2)
    assert [schedule.next(0), schedule.next(1)] == [4, 0]   # the largest group first (c), then a
    assert [schedule.next(1), schedule.next(1)] == [2, 1]   # a again; a is done, so b (c is taken)
    assert [schedule.next(0), schedule.next(0)] == [5, 6]   # c to its end
    assert [schedule.next(0), schedule.next(1)] == [3, None]  # every group left is taken: it helps with b
    plain = workers.Schedule([None] * 3, 2)   # no groups: the jobs' order
    assert [plain.next(1), plain.next(0), plain.next(1), plain.next(0)] == [0, 1, 2, None]


def test_the_planted_zoo_keeps_each_members_seeds_on_one_worker(monkeypatch):
    """``audit_planted`` on two workers: each worker audits every seed of one member (whose programs it then
    compiles once) instead of two workers starting the same member's first seeds together."""
    ran = {0: [], 1: []}

    def scheduled(jobs, count, on_done=None, groups=None):  # run_jobs's order of work, without processes
        schedule = workers.Schedule(groups if groups is not None else [None] * len(jobs), count)
        for _ in jobs:
            worker = min(ran, key=lambda w: len(ran[w]))
            ran[worker].append(jobs[schedule.next(worker)][1][:2])
        return [(SimpleNamespace(correct=True), None, None)] * len(jobs)

    monkeypatch.setattr(zoo, "run_jobs", scheduled)
    zoo.audit_planted(["gd", "gd_wipes"], seeds=range(3), workers=2)
    assert sorted(ran.values()) == [[("gd", s) for s in range(3)], [("gd_wipes", s) for s in range(3)]]


def test_run_jobs_with_groups_returns_results_in_job_order():
    jobs = [(pow, (2, k)) for k in range(6)]
    assert workers.run_jobs(jobs, 2, groups=["a", "b", "a", "b", "c", "c"]) == [1, 2, 4, 8, 16, 32]


def test_run_jobs_names_the_job_whose_worker_died():
    with pytest.raises(workers.WorkerDied, match=r"^a worker process died running job 2 of 3 \(abort\), most often .*"
                                             r"out of memory") as caught:
        workers.run_jobs([(pow, (2, 1)), (os.abort, ()), (pow, (2, 3))], 1, jobs_per_worker=1)
    assert "\n" not in str(caught.value)


PARENT = """
import os, sys, time
from probes.zoo import workers
print(os.getpid(), flush=True)
workers.run_jobs([(time.sleep, (600,))] * 2, 2)
"""


def _workers(pid: int) -> set[int]:
    """The spawned worker processes whose parent is ``pid`` (Linux's /proc; one that ends while read is left out)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                out.add(int(stat.parent.name))
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by whoever adopted it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")
def test_workers_end_when_the_command_that_started_them_is_killed():
    """A command killed outright runs no clean-up; its workers see that their parent is gone and end, rather than
    wait for work for ever (each holding the programs it compiled)."""
    import signal
    import time

    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    deadline = time.time() + 120
    while time.time() < deadline:  # both workers up, each with a second thread (its imports' or the watch)
        workers = _workers(pid)
        if len(workers) == 2 and all(len(list(Path(f"/proc/{w}/task").iterdir())) > 1 for w in workers):
            break
        time.sleep(0.5)
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.5)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, "the workers outlived the command that started them"


def test_zoo_script_ends_in_one_line_and_keeps_its_files_when_a_worker_dies(tmp_path, monkeypatch, script_error):
    (tmp_path / "zoo.json").write_text("{}\n")
    message = "a worker process died running job 1 of 2 (learned_job of 'quadratic'), most often ..."

    def dies(*args, **kwargs):
        raise workers.WorkerDied(message)

    monkeypatch.setattr(workers, "run_jobs", dies)
    code, err = script_error("zoo", "--quick", "--scenarios", "quadratic", "--planted", "gd", "--no-incontext",
                             "--out", str(tmp_path))
    assert code == 1 and err.strip().splitlines() == [f"zoo.py: error: {message}"]
    assert (tmp_path / "zoo.json").read_text() == "{}\n" and not (tmp_path / "report.html").exists()


@pytest.mark.first
def test_zoo_script_trains_audits_and_writes_json_and_html(tmp_path):
    result = _zoo("--quick", "--scenarios", "quadratic", "--planted", "gd", "--no-incontext", "--jobs", "2", "--tasks", "16",
                  "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "zoo.json").read_text())
    kinds = {e["name"]: e["kind"] for e in record["entries"]}
    assert kinds == {"quadratic": "learned", "gd": "planted"}
    for e in record["entries"]:
        assert {"name", "family", "seed", "expected", "label", "pursued", "kind", "expected_pursued", "correct",
                "confidence", "evidence"} <= set(e)
    learned = next(e for e in record["entries"] if e["name"] == "quadratic")
    assert {"run", "reused", "eval_ratio", "extra"} <= set(learned) and learned["reused"] is False
    gd = next(e for e in record["entries"] if e["name"] == "gd")
    assert (gd["label"], gd["pursued"], gd["correct"]) == ("robust", "loss", True)
    assert record["planted_accuracy"] == 1.0 and record["accuracy"] == pytest.approx(
        sum(e["correct"] for e in record["entries"]) / 2)
    assert record["scenarios"]["quadratic"]["seeds"] == 1
    page = (tmp_path / "report.html").read_text()
    assert page.index("<table class=zoo>") < page.index("<section>") and page.index("<table class=zoo>") < page.index("hypothesis")  # the table comes first
    assert page.count("<section>") == 2 and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "config.json").is_file()
    assert "learned quadratic seed 0" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--scenarios", "nope"], "unknown scenario 'nope'"),
    (["--planted", "nope"], "unknown planted member 'nope'"),
    (["--seeds", "0"], "must be positive"),
])
def test_zoo_script_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message, script_error):
    code, stderr = script_error("zoo", *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "zoo.json").exists()


def test_a_scenario_trains_with_its_familys_defaults_and_long_ones_stay_out_of_the_quick_zoo():
    from lab.meta.train import MetaConfig

    digits = scenarios.SCENARIOS["digits"]
    assert digits.meta_config(3) == MetaConfig.for_family("digits_mlp", estimator="pes", seed=3)  # train.py's run
    assert digits.meta_config(3).meta_steps == 1000 and digits.meta_config(3, quick=True).meta_steps == 200
    assert "digits" not in scenarios.default_names(quick=True) and "digits" in scenarios.default_names()
    assert scenarios.default_names() == list(scenarios.SCENARIOS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quadratic", "narrow", "wipes", "crumbs", "organism"])
def test_scenario_hypothesis_holds_on_seed_0(tmp_path, name):
    entry, verdict, _ = scenarios.audit_scenario(scenarios.SCENARIOS[name], 0, tmp_path)
    assert entry.correct, verdict.evidence
