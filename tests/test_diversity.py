"""The task-diversity sweep (Raventós et al. 2023, "Pretraining task diversity and the emergence of non-Bayesian
in-context learning for regression"): the M* rule on hand-made numbers, the dMMSE reference against the family's
pool posterior, a tiny sweep through the script (schema, reuse of run folders; the audit stubbed so it stays fast),
bad input, and, marked slow, the transition itself on a real small sweep."""

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from lab.families.incontext import ICLFamily
from probes.zoo import diversity as D

import scripts_loader as scripts  # tests/scripts_loader.py



def script():
    return scripts.load("diversity")


def fresh(model, dmmse=1.0, ridge=0.2):
    return {"model": model, "dmmse": dmmse, "ridge": ridge}


# -----------------------------------------------------------------------------------------------------------
# The rule
# -----------------------------------------------------------------------------------------------------------
def test_ridge_side_needs_an_aligned_label_and_predictions_nearer_ridge():
    assert D.ridge_side("approximate", {"dmmse": 0.5, "ridge": 0.2})
    assert D.ridge_side("robust", {"dmmse": 0.05, "ridge": 0.04})
    assert not D.ridge_side("approximate", {"dmmse": 0.2, "ridge": 0.5})      # nearer the dMMSE
    assert not D.ridge_side("approximate", {"dmmse": 0.25, "ridge": 0.25})    # a tie is not nearer ridge
    assert not D.ridge_side("proxy_general", {"dmmse": 0.5, "ridge": 0.01})   # the label must be aligned too
    assert not D.ridge_side("not_optimizing", {"dmmse": 0.5, "ridge": 0.01})
    assert not D.ridge_side("approximate", {"dmmse": float("nan"), "ridge": 0.01})
    assert not D.ridge_side("approximate", {"dmmse": None, "ridge": 0.01})


def test_loss_side_is_the_same_rule_on_losses():
    assert D.loss_side("approximate", fresh(0.3))           # |0.3 − 0.2| < |0.3 − 1.0|
    assert not D.loss_side("approximate", fresh(0.7))       # nearer the dMMSE
    assert not D.loss_side("approximate", fresh(0.75, ridge=0.5))  # exactly halfway is not nearer ridge
    assert not D.loss_side("proxy_general", fresh(0.21))
    assert not D.loss_side("approximate", fresh(float("nan")))
    # the failure the prediction rule avoids: a model 0.03 above ridge once dMMSE is 0.003 above it
    assert not D.loss_side("approximate", fresh(0.203, dmmse=0.176, ridge=0.173))


def test_threshold_is_the_first_pool_size_on_ridges_side():
    pools = [1, 2, 4, 8, 16]
    assert D.threshold(pools, [False, False, True, True, True]) == (4, True)
    assert D.threshold(pools, [False, True, False, True, True]) == (2, False)   # first crossing, not monotone
    assert D.threshold(pools, [False] * 5) == (None, False)
    assert D.threshold([16, 1, 4], [True, False, True]) == (4, True)           # order of the pools is irrelevant
    s = D.spread([4, 16, None, 8])
    assert s["seeds"] == 4 and s["found"] == 3 and s["min"] == 4 and s["max"] == 16
    assert s["median"] == pytest.approx(8.0) and s["log2_iqr"] == pytest.approx(1.0)
    assert D.spread([None, None]) == {"seeds": 2, "found": 0, "median": None, "min": None, "max": None,
                                      "log2_iqr": None}


def test_summarize_on_hand_made_members():
    config = D.SweepConfig(pools=(4, 1, 16), seeds=(0, 1))
    assert config.pools == (1, 4, 16)
    sides = {(1, 0): False, (4, 0): True, (16, 0): True, (1, 1): False, (4, 1): False, (16, 1): True}
    members = [{"pool": m, "seed": s, "label": "approximate" if side else "proxy_general", "pursued": None,
                "ridge_side": side, "loss_side": False, "losses": {"fresh": fresh(0.2), "pool": fresh(0.1)},
                "distances": {"fresh": {"dmmse": 0.3, "ridge": 0.1}, "pool": {"dmmse": 0.3, "ridge": 0.1}}}
               for (m, s), side in sides.items()]
    record = D.summarize(config, members)
    assert record["threshold"]["per_seed"] == {
        "0": {"m_star": 4, "monotone": True, "inside": True, "m_star_loss": None},
        "1": {"m_star": 16, "monotone": True, "inside": True, "m_star_loss": None}}
    assert record["threshold"]["loss_rule"]["found"] == 0
    assert record["threshold"]["median"] == pytest.approx(8.0)
    assert record["per_pool"]["4"]["labels"] == ["approximate", "proxy_general"]
    assert record["ridge_reference"] == "ridge_0.25" and record["rule"] == D.RULE


def test_config_refuses_bad_sweeps():
    for kw in ({"pools": ()}, {"pools": (0, 4)}, {"pools": (4, 4)}, {"seeds": ()}, {"seeds": (1, 1)},
               {"family": {**D.FAMILY, "pool": 3}}, {"eval_tasks": 4}):
        with pytest.raises(ValueError):
            D.SweepConfig(**kw)


def test_dmmse_is_the_familys_pool_posterior():
    fam = ICLFamily(**D.FAMILY, pool=8, pool_seed=3)
    tasks = fam.sample_batch(jax.random.key(0), 64)
    ref = jax.vmap(lambda t: fam.argmins(t)["pool_posterior"])(tasks)
    ours = jax.vmap(lambda x, y: D.dmmse_weights(fam.pool_weights(), x, y, fam.noise ** 2))(tasks["x"], tasks["y"])
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-6)


# -----------------------------------------------------------------------------------------------------------
# A tiny sweep through the script (the audit stubbed: the real one is the slow test's)
# -----------------------------------------------------------------------------------------------------------
def _stub_audit(calls):
    def auditor(run, seed, tasks, full=False):
        calls.append((Path(run).name, seed, tasks, full))
        pool = json.loads((Path(run) / "config.json").read_text())["family"]["pool"]
        label = "proxy_general" if pool == 1 else "approximate"
        return types.SimpleNamespace(label=label, pursued="pool_posterior" if pool == 1 else "icl_ls",
                                     confidence=0.5, evidence="stub", reports={})
    return auditor


def test_tiny_sweep_writes_the_record_and_reuses_its_runs(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(D, "audit_member", _stub_audit(calls))
    argv = ["--pools", "4,1", "--seeds", "1", "--steps", "3", "--eval-tasks", "64", "--audit-tasks", "16",
            "--quiet", "--out", str(tmp_path / "out")]
    assert script().main(argv) == 0
    out = tmp_path / "out"
    record = json.loads((out / "diversity.json").read_text())
    assert set(record) >= {"paper", "rule", "config", "per_pool", "threshold", "members", "wall_seconds"}
    assert record["config"]["pools"] == [1, 4] and record["config"]["seeds"] == [0]
    assert record["config"]["train"]["steps"] == 3
    for m in ("1", "4"):
        p = record["per_pool"][m]
        assert len(p["labels"]) == len(p["ridge_side"]) == 1
        for where in ("fresh", "pool"):
            assert set(p[where]) == {"model", "dmmse", "ridge"}
            assert all(np.isfinite(p[where][r][0]) for r in p[where])
    assert record["per_pool"]["1"]["labels"] == ["proxy_general"]
    assert set(record["threshold"]["per_seed"]["0"]) == {"m_star", "monotone", "inside", "m_star_loss"}
    assert set(record["per_pool"]["4"]["distance_fresh"]) == {"dmmse", "ridge"}
    assert [c[1:] for c in calls] == [(0, 16, False), (0, 16, False)]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("diversity_pool") for r in runs)
    assert all(not Path(e["run"]).is_absolute() and not e["reused"] and not e["audit_reused"]
               for e in record["members"])
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and "http" not in page.split(
        "<body>")[1]
    first = [e["losses"] for e in record["members"]]
    # a second call trains nothing: every run is reused, with the same numbers
    assert script().main(argv) == 0
    again = json.loads((out / "diversity.json").read_text())
    assert all(e["reused"] and e["audit_reused"] for e in again["members"])
    assert len(calls) == 2  # the audits were reused too (root/audits/)
    assert [e["losses"] for e in again["members"]] == first
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs


@pytest.mark.parametrize("argv", [
    ["--pools", "0,4"], ["--pools", "a,b"], ["--pools", "4,4"], ["--pools", ","], ["--seeds", "0"],
    ["--seeds", "x"], ["--eval-tasks", "3"], ["--steps", "-1"], []])
def test_bad_input_exits_2_with_one_line(argv, tmp_path, capsys):
    out = [] if argv == [] else ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        script().parse(argv + out)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diversity.py: error:") and "\n" not in err


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        script().parse(["--out", str(f)])
    assert e.value.code == 2
    assert "is not a folder" in capsys.readouterr().err


# -----------------------------------------------------------------------------------------------------------
# The transition (slow: a real sweep, trained and audited)
# -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_transition_on_a_real_small_sweep(tmp_path):
    config = D.SweepConfig(pools=(1, 4, 64, 1024), seeds=(0,))
    record = D.sweep(config, tmp_path, jax.random.key(0))
    per = record["per_pool"]
    # one teacher: the pool posterior is the teacher itself; the model follows it and fails on fresh tasks
    assert per["1"]["labels"] == ["proxy_general"] and per["1"]["pursued"] == ["pool_posterior"]
    assert not per["1"]["ridge_side"][0]
    assert per["1"]["fresh"]["model"][0] > 5 * per["1"]["fresh"]["ridge"][0]
    # a thousand teachers: aligned, within 30% of ridge on fresh tasks, no better on its pool than on fresh ones
    assert per["1024"]["labels"][0] in D.ALIGNED and per["1024"]["ridge_side"][0]
    assert per["1024"]["fresh"]["model"][0] < 1.3 * per["1024"]["fresh"]["ridge"][0]
    thr = record["threshold"]["per_seed"]["0"]
    assert thr["m_star"] is not None and thr["inside"]
