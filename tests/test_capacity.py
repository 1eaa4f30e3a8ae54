"""The capacity sweep (approximate alignment from limited capacity, Hubinger et al. 2019 §4): the H* rule on
hand-made labels, the record and its page from hand-made members, the script's files and bad input, and, marked
slow, the sweep's two ends on real meta-trained optimizers."""

import json

import pytest

from probes.zoo import capacity as C

import scripts_loader as scripts  # tests/scripts_loader.py



def script():
    return scripts.load("capacity")


@pytest.mark.parametrize("hidden, labels, expected", [
    ([2, 8, 32], ["approximate", "robust", "robust"], 8),
    ([32, 2, 8], ["robust", "approximate", "robust"], 8),            # unsorted input, same pairs
    ([2, 8, 32], ["robust", "approximate", "robust"], 32),           # a relapse moves H* above it
    ([2, 8, 32], ["robust", "robust", "robust"], 2),
    ([2, 8, 32], ["approximate", "robust", "approximate"], None),    # the largest is not robust
    ([1, 2], ["not_optimizing", "robust"], 2),
])
def test_threshold_is_the_smallest_size_from_which_every_larger_is_robust(hidden, labels, expected):
    assert C.threshold(hidden, labels) == expected


def _member(hidden, seed, label, drift):
    return {"hidden": hidden, "seed": seed, "label": label, "pursued": "loss", "confidence": 0.8, "evidence": "e",
            "drift": drift, "drift_significant": drift is not None and drift > C.DRIFT_SIGNIFICANT,
            "unnamed_share": 0.0, "eval_ratio": 1.0 / hidden, "run": f"runs/capacity_h{hidden}-seed{seed}-x",
            "reused": False, "seconds": 1.0}


def _record():
    config = C.SweepConfig(hidden=(8, 2, 32), seeds=(0, 1, 2))
    labels = {0: ("approximate", "robust", "robust"), 1: ("approximate", "approximate", "robust"),
              2: ("not_optimizing", "robust", "approximate")}
    members = [_member(h, s, labels[s][i], None if labels[s][i] == "not_optimizing" else 0.2 / h)
               for s in config.seeds for i, h in enumerate(config.hidden)]
    return C.summarize(config, members, wall=3.0)


def test_summary_counts_labels_and_finds_the_threshold_per_seed():
    record = _record()
    assert record["config"]["hidden"] == [2, 8, 32] and record["config"]["features"] == list(C.FEATURES)
    assert record["per_hidden"]["2"]["labels"] == ["approximate", "approximate", "not_optimizing"]
    assert record["per_hidden"]["2"]["approximate"] == 2 and record["per_hidden"]["32"]["robust"] == 2
    assert record["per_hidden"]["2"]["drift"] == [0.1, 0.1, None]
    thr = record["threshold"]
    assert {s: v["h_star"] for s, v in thr["per_seed"].items()} == {"0": 8, "1": 32, "2": None}
    assert thr["found"] == 2 and thr["min"] == 8 and thr["max"] == 32 and thr["median"] == pytest.approx(16.0)


def test_page_is_self_contained_with_the_figure():
    page = C.render_page(_record())
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "http" not in page.split("<body>")[1]
    assert "H* median 16" in page


def test_script_writes_the_record_and_page_from_its_members(tmp_path, monkeypatch):
    calls = []

    def member_job(hidden, seed, root, meta_steps=None, tasks=32):
        calls.append((hidden, seed, meta_steps, tasks))
        return _member(hidden, seed, "robust" if hidden >= 8 else "approximate", 0.1 / hidden)

    monkeypatch.setattr(C, "member_job", member_job)
    out = tmp_path / "out"
    argv = ["--hidden", "8,2", "--seeds", "2", "--meta-steps", "5", "--tasks", "16", "--jobs", "1", "--quiet",
            "--out", str(out)]
    assert script().main(argv) == 0
    record = json.loads((out / "capacity.json").read_text())
    assert sorted(calls) == [(2, 0, 5, 16), (2, 1, 5, 16), (8, 0, 5, 16), (8, 1, 5, 16)]
    assert record["config"]["meta_steps"] == 5 and record["quick"] is False
    assert record["threshold"]["median"] == pytest.approx(8.0)
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("argv", [["--hidden", "0,4"], ["--hidden", "a"], ["--hidden", "4,4"], ["--hidden", ","],
                                  ["--seeds", "0"], ["--meta-steps", "-1"], ["--tasks", "2"], []])
def test_bad_input_exits_2_with_one_line(argv, tmp_path, capsys):
    out = [] if argv == [] else ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        script().parse(argv + out)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capacity.py: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_config_refuses_what_the_sweep_cannot_run():
    for bad in ({"hidden": ()}, {"hidden": (2, 2)}, {"seeds": (0, 0)}, {"meta_steps": 0}, {"audit_tasks": 4}):
        with pytest.raises(ValueError):
            C.SweepConfig(**bad)


@pytest.mark.slow
def test_two_units_drift_and_thirty_two_do_not(tmp_path):
    """The sweep's two ends on seed 0 with the default meta-training: a 2-unit optimizer keeps a significant drift
    (approximate), a 32-unit one does not (robust), so H* is 32."""
    record = C.sweep(C.SweepConfig(hidden=(2, 32), seeds=(0,)), tmp_path)
    small, full = (record["members"][i] for i in (0, 1))
    assert small["label"] == "approximate" and small["drift_significant"], small["evidence"]
    assert full["label"] == "robust" and not full["drift_significant"], full["evidence"]
    assert small["drift"] > 2 * full["drift"]
    assert record["threshold"]["per_seed"]["0"]["h_star"] == 32
