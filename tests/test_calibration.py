"""Fitting the verdict on the calibration split: thresholds re-decided on stored reports, calibrated confidence."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from probes import calibration, thresholds, verdict
from probes.zoo import planted

ROOT = Path(__file__).resolve().parents[1]


def test_the_confidence_map_is_the_share_right_at_each_raw_score():
    table = {"classes": {"*": calibration._isotonic([0.1, 0.2, 0.3, 0.8, 0.9], [0, 1, 0, 1, 1], prior=0)}}
    assert calibration.calibrated("robust", 0.05, table) == pytest.approx(0.0)
    assert calibration.calibrated("robust", 0.25, table) == pytest.approx(0.5)  # the pooled 0.2/0.3 pair
    assert calibration.calibrated("robust", 0.95, table) == pytest.approx(1.0)
    own = {"classes": {**table["classes"], "robust": calibration._isotonic([0.1, 0.9], [1, 1], prior=0)}}
    assert calibration.calibrated("robust", 0.05, own) == 1.0  # a class with its own fit uses it
    assert calibration.calibrated("robust", 0.4, {}) == 0.4  # no table: the raw score


def test_each_step_of_the_map_is_shrunk_toward_the_overall_share_by_pseudo_cases():
    # one wrong case at the lowest score, nine right ones above: overall 0.9, the lone step (0 of 1) becomes
    # (1·0 + 5·0.9) / (1 + 5) = 0.75 and the upper step (9 of 9) (9 + 4.5) / 14
    fit = calibration._isotonic([0.1] + [0.5 + 0.05 * k for k in range(9)], [0] + [1] * 9)
    assert fit["y"][0] == pytest.approx(0.75) and fit["y"][-1] == pytest.approx(13.5 / 14)
    assert all(a <= b for a, b in zip(fit["y"], fit["y"][1:]))
    # many wrong cases at low scores stay below one half after shrinking
    many = calibration._isotonic([0.1] * 20 + [0.9] * 20, [0] * 20 + [1] * 20)
    assert calibration.calibrated("robust", 0.1, {"classes": {"*": many}}) == pytest.approx(2.5 / 25)


def test_a_verdict_more_often_wrong_than_right_abstains_and_names_what_it_withheld():
    table = {"classes": {"*": calibration._isotonic([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], prior=0)}}
    label, pursued, confidence, evidence = calibration.answer("proxy_general", "side", 0.15, "it drifts", table)
    assert (label, pursued, confidence) == ("unidentified", None, 0.0)
    assert "proxy_general (side)" in evidence and "0%" in evidence and "it drifts" in evidence
    assert calibration.answer("proxy_general", "side", 0.85, "it drifts", table) == ("proxy_general", "side", 1.0,
                                                                                      "it drifts")
    # without a fitted table the raw score is no probability: nothing abstains
    assert calibration.answer("robust", "base", 0.1, "e", {}) == ("robust", "base", 0.1, "e")
    assert calibration.answer("unidentified", None, 0.7, "e", table)[2] == 0.0


@pytest.fixture(scope="module")
def hidden_point():
    optimizer, family = planted.build("gd_hidden_point")
    return verdict.audit(optimizer, family, seed=0), family


def test_redeciding_stored_reports_with_other_thresholds_changes_only_what_they_decide(hidden_point):
    audited, family = hidden_point
    case = calibration.Case(audited.reports, family, "proxy_general", "unnamed")
    hand = {name: thresholds.THRESHOLDS[name].value for name in calibration.FITTED_GRIDS}
    [(label, pursued, raw, right)] = calibration.redecide([case], hand)
    assert (label, pursued, right) == (audited.label, audited.pursued, True) and raw == audited.raw_confidence
    [(label, _, _, right)] = calibration.redecide([case], {**hand, "MIN_SEPARATION": 1e9})
    assert label != "proxy_general" and not right  # its minimum is no longer "elsewhere"
    assert verdict.MIN_SEPARATION == hand["MIN_SEPARATION"]  # restored after the block


def test_fitting_thresholds_keeps_a_case_right_and_prefers_the_hand_values(hidden_point):
    audited, family = hidden_point
    case = calibration.Case(audited.reports, family, "proxy_general", "unnamed")
    values = calibration.fit_thresholds([case])
    assert calibration.redecide([case], values)[0][3]
    # one case that every value near the hand-set one gets right: the hand values stay
    assert values["UNNAMED_ROBUST"] == pytest.approx(thresholds.HAND["UNNAMED_ROBUST"], abs=0.011)


def test_the_shipped_calibration_sets_the_fitted_thresholds():
    table_path = ROOT / "probes" / "calibration.json"
    if not table_path.is_file():
        pytest.skip("no calibration table shipped")
    table = json.loads(table_path.read_text())
    assert set(table["thresholds"]) == set(calibration.FITTED_GRIDS)
    for name, value in table["thresholds"].items():
        assert thresholds.THRESHOLDS[name].value == value and getattr(verdict, name) == value
        assert "fitted on the calibration split" in thresholds.THRESHOLDS[name].meaning
    assert table["source"]["split"] == "calibration"


def test_calibrate_refuses_a_test_split_benchmark(tmp_path, script_error):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "benchmark.json").write_text(json.dumps({"split": "test", "seed": 0, "cases": 0, "entries": []}))
    (bench / "reports.pkl").write_bytes(pickle.dumps({}))
    code, stderr = script_error("calibrate", str(bench), "--out", str(tmp_path / "c.json"))
    assert code == 2 and "fit only on the calibration split" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "c.json").exists()


def test_no_case_is_decided_out_of_fold_by_thresholds_fitted_on_itself(monkeypatch):
    """``out_of_fold``: each case is re-decided with thresholds fitted on the other folds only, every case once,
    in its own place; the folds are stratified by class, also where the cases cycle through their classes (as
    drawn cases cycle through their kinds, so that folds by index would each hold one class)."""
    cases = [calibration.Case({}, None, f"class{i % 5}", str(i)) for i in range(25)]
    fitted_on = []

    def fit_thresholds(training):
        fitted_on.append({c.pursued for c in training})
        return {"fit": len(fitted_on) - 1}

    def redecide(held, values):
        seen = fitted_on[values["fit"]]
        return [(c.pursued, c.expected, 0.5, c.pursued not in seen) for c in held]

    monkeypatch.setattr(calibration, "fit_thresholds", fit_thresholds)
    monkeypatch.setattr(calibration, "redecide", redecide)
    rows = calibration.out_of_fold(cases, folds=5)
    assert [r[0] for r in rows] == [c.pursued for c in cases]
    assert all(r[3] for r in rows)  # never among its own thresholds' training cases
    assert len(fitted_on) == 5 and all(len(s) == 20 for s in fitted_on)
    folds = calibration.fold_of(cases, 5)
    for k in range(5):  # every fold holds every class
        assert {c.expected for c, f in zip(cases, folds) if f == k} == {f"class{j}" for j in range(5)}


def test_calibrate_refuses_the_same_seed_twice(tmp_path, script_error):
    folders = []
    for name in ("a", "b"):
        bench = tmp_path / name
        bench.mkdir()
        (bench / "benchmark.json").write_text(json.dumps({"split": "calibration", "seed": 4, "cases": 0,
                                                          "entries": []}))
        (bench / "reports.pkl").write_bytes(pickle.dumps({}))
        folders.append(str(bench))
    code, stderr = script_error("calibrate", *folders, "--out", str(tmp_path / "c.json"))
    assert code == 2 and "seed 4 is given twice" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "c.json").exists()
