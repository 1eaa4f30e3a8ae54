"""probes.report: the self-contained HTML page of a verdict, the terminal tables, the report folder, and
scripts/screenshot.py (skipped where Chromium is not installed). One planted member is audited once, with few
tasks, and shared by the tests."""

import base64
import dataclasses
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from probes import report
from probes.zoo import planted
from probes.verdict import ProbeFailure, Skipped, audit

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot.py"
IMG = '<img alt="'
PNG = 'src="data:image/png;base64,'
HAS_CHROMIUM = shutil.which("chromium") is not None or os.path.exists("/usr/bin/chromium")


@pytest.fixture(scope="module")
def audited():
    optimizer, family = planted.build("gd_wipes")
    verdict = audit(optimizer, family, seed=0, tasks=8)
    traces = report.collect_traces(optimizer, family, seed=0, tasks=8)
    return verdict, traces


@pytest.fixture(scope="module")
def page(audited):
    return report.render_html(*audited)


def _text(table) -> str:
    console = Console(record=True, width=120)
    console.print(table)
    return console.export_text()


def test_traces_cover_every_shift_on_the_audits_tasks(audited):
    verdict, traces = audited
    assert sorted(traces) == verdict.shifts
    assert all(t.n_tasks == 8 and t.shift == s for s, t in traces.items())


def test_html_is_self_contained_and_names_the_verdict(audited, page):
    verdict, _ = audited
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert page.count(PNG) == 4  # trajectories, weights, capability sweep, cues: every report is present
    for b64 in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    for text in (verdict.label, verdict.pursued, verdict.evidence, verdict.family, verdict.base, *verdict.shifts):
        assert html.escape(text) in page
    assert "relative to the shifts tested" in page and "behavioural signature" in page
    for name in verdict.reports:  # the numbers of every probe report
        assert f"<h3>{name} " in page
    assert "figure skipped" not in page


def test_report_numbers_are_rounded_to_three_significant_digits(audited, page):
    comp = audited[0].reports["competence"]
    assert f">{report.fmt(comp.competence)}<" in page and report.fmt(comp.competence) == f"{comp.competence:.3g}"
    assert str(comp.competence) not in page
    assert report.fmt(None) == "—" and report.fmt(True) == "yes" and report.fmt(float("inf")) == "inf"
    assert report.fmt(0.000123456) == "0.000123" and report.fmt(1234567.0) == "1.23e+06" and report.fmt(3) == "3"


def test_write_report_writes_both_files_and_the_json_round_trips(audited, tmp_path):
    verdict, traces = audited
    out = tmp_path / "reports" / "gd_wipes"  # created if missing
    report.write_report(out, verdict, traces)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temporary files left
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 1
    assert data == json.loads(json.dumps(verdict.to_json()))
    assert (data["label"], data["pursued"]) == (verdict.label, verdict.pursued)
    assert set(data["reports"]) == set(verdict.reports)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count(PNG) == 4 and html.escape(verdict.evidence) in page
    report.write_report(out, verdict, None)  # rewriting replaces both files in place
    assert (out / "report.html").read_text(encoding="utf-8").count(PNG) == 3


def test_terminal_table_renders_label_evidence_and_a_row_per_probe(audited):
    verdict, _ = audited
    text = _text(report.terminal_table(verdict))
    for item in (verdict.label, verdict.pursued, "confidence", "evidence", *verdict.reports):
        assert item in text
    assert "on spill_open it uses the opened affordance" in text
    assert "sensitivity" in text and "turned toward" in text


def test_zoo_table_marks_matches_and_misses():
    entries = [
        {"name": "gd", "family": "quadratic", "seed": 0, "expected": "robust", "label": "robust", "pursued": "loss",
         "expected_pursued": "loss"},
        {"name": "pull", "family": "quadratic", "seed": 1, "expected": "proxy_general", "label": "robust",
         "pursued": "loss", "expected_pursued": "norm"},
        {"name": "gd_wipes", "family": "wipes", "seed": 0, "expected": "proxy_side_effect",
         "label": "proxy_side_effect", "pursued": "dirt_left", "expected_pursued": "wipes"},
    ]
    text = _text(report.zoo_table(entries))
    assert text.count("✓") == 1 and text.count("✗") == 2 and "1/3 correct" in text
    assert "pull" in text and "proxy_general" in text and "expected pursued" in text
    no_pursued = [{k: v for k, v in e.items() if k != "expected_pursued"} for e in entries]
    text = _text(report.zoo_table(no_pursued))
    assert text.count("✓") == 2 and "expected pursued" not in text


def test_a_verdict_without_the_capability_report_still_renders_and_says_so(audited):
    verdict, traces = audited
    reduced = dataclasses.replace(verdict, reports={k: r for k, r in verdict.reports.items() if k != "capability"})
    page = report.render_html(reduced, traces)
    assert page.count(PNG) == 3
    assert "Capability sweep: figure skipped</b> because the capability report is absent" in page
    assert "<h3>capability " not in page
    assert "Capability sweep: figure skipped" not in report.render_html(verdict, traces)
    text = _text(report.terminal_table(reduced))
    assert not re.search(r"│ capability\s+│", text) and re.search(r"│ gradient_regression\s+│", text)


def test_no_traces_and_skipped_or_failed_probes_are_explained(audited):
    verdict, _ = audited
    reports = dict(verdict.reports, cues=Skipped("the competence gate decided"),
                   gradient_regression=ProbeFailure("LinAlgError: singular matrix"))
    page = report.render_html(dataclasses.replace(verdict, reports=reports), None)
    assert page.count(PNG) == 1  # only the capability sweep is left
    assert "no traces were given" in page
    assert "the probe was skipped (the competence gate decided)" in page
    assert "the probe failed (LinAlgError: singular matrix)" in page
    text = _text(report.terminal_table(dataclasses.replace(verdict, reports=reports)))
    assert "skipped" in text and "LinAlgError" in text


def _screenshot(*args, timeout=180):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_screenshot_of_a_missing_file_is_a_one_line_error(tmp_path):
    proc = _screenshot(tmp_path / "nope.html", tmp_path / "nope.png")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "error" in proc.stderr


@pytest.mark.skipif(not HAS_CHROMIUM, reason="Chromium is not installed (apt-get install chromium)")
def test_screenshot_of_a_written_report_is_not_blank(audited, tmp_path):
    report.write_report(tmp_path, *audited)
    png = tmp_path / "shot.png"
    proc = _screenshot(tmp_path / "report.html", png)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: ") and len(proc.stdout.strip().splitlines()) == 1
    assert png.stat().st_size > 10_000


@pytest.mark.skipif(not HAS_CHROMIUM, reason="Chromium is not installed (apt-get install chromium)")
def test_screenshot_of_an_empty_page_is_blank(tmp_path):
    page = tmp_path / "empty.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    proc = _screenshot(page, tmp_path / "empty.png")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("blank: ")
