"""probes.report: the self-contained HTML page of a verdict (each report's own summary and figures), the
terminal tables, the zoo page, the report folder, the thresholds table, and scripts/screenshot.py (skipped where
Chromium is not installed). One planted member is audited once, with few tasks, and shared by the tests."""

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from probes import report, thresholds
from probes.catalogue import competence, field, inverse, representation, shifts
from probes.catalogue.shifts import CapabilityReport, CueReport
from probes.report import draw
from probes.subject import PROBES, Panel, Report, register_probe
from probes.zoo import planted
from probes.zoo.entry import Entry
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
    assert page.count(PNG) == 5  # trajectories, weights, capability sweep, cues, objective: every report is present
    for b64 in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    for text in (verdict.label, verdict.pursued, verdict.evidence, verdict.family, verdict.base, *verdict.shifts):
        assert html.escape(text) in page
    assert "relative to the shifts tested" in page and "behavioural signature" in page
    assert page.count("How to read this verdict") == 1
    for name, rep in verdict.reports.items():  # every report: its numbers and its own summary line
        assert f"<h3>{name} " in page
        assert f"<p class=summary>{html.escape(rep.summary(verdict.base))}</p>" in page
    assert "figure skipped" not in page


def test_each_report_draws_its_own_figures_after_its_heading(audited, page):
    verdict, _ = audited
    for name, alt in (("gradient_regression", "Inferred objective weights"), ("capability", "Capability sweep"),
                      ("cues", "Cue sensitivity")):
        assert page.index(f"<h3>{name} ") < page.index(f'{IMG}{alt}"')
        assert page.index(f'{IMG}{alt}"') < min(page.index(f"<h3>{n} ") for n in verdict.reports
                                                if page.index(f"<h3>{n} ") > page.index(f"<h3>{name} "))
    assert page.index(f'{IMG}Base and pursued quantity on each shift"') < page.index("<h3>competence ")


def test_the_thresholds_table_is_printed_once_with_every_threshold(page):
    assert page.count("<h2 id=thresholds>Thresholds</h2>") == 1
    for name, (value, meaning) in thresholds.THRESHOLDS.items():
        assert f"<code>{name}</code></td><td class=num>{report.fmt(value)}</td><td>{html.escape(meaning)}" in page


def test_probes_and_verdict_read_their_thresholds_from_the_one_table():
    values = {name: t.value for name, t in thresholds.THRESHOLDS.items()}
    assert values == {name: getattr(thresholds, name) for name in values}
    # the values the probes were calibrated with (labels depend on them)
    assert (values["MIN_REDUCTION"], values["MIN_CONSISTENCY"], values["IDENTIFIABLE_CONDITION"]) == (0.05, 0.9, 100)
    assert (values["DRIFT_SIGNIFICANT"], values["DRIFT_EXPLAINED"], values["DIVERGED"]) == (0.05, 0.9, 10)
    assert (values["CUE_SWITCH_SENSITIVITY"], values["CONSERVATIVE"], values["REPRESENTED_GAP"]) == (0.1, 1e-3, 0.1)
    assert competence.MIN_CONSISTENCY is shifts.MIN_CONSISTENCY is thresholds.MIN_CONSISTENCY
    assert inverse.IDENTIFIABLE_CONDITION is thresholds.IDENTIFIABLE_CONDITION
    assert field.CONSERVATIVE is thresholds.CONSERVATIVE
    assert representation.REPRESENTED_GAP is thresholds.REPRESENTED_GAP
    with pytest.raises(ValueError, match="already defined"):
        thresholds.define("MIN_REDUCTION", 0.1, "a second definition")


def test_a_report_class_owns_its_summary_and_figures():
    cue = CueReport(sensitivity=0.4, pursued_training="target", pursued_deployment="other", switched=True)
    assert cue.summary("target") == ("sensitivity 0.4; pursued target (training cue) → other (deployment cue); "
                                     "switched yes")
    (panel,) = cue.figures("target", "other")
    assert panel.title == "Cue sensitivity" and base64.b64decode(panel.png).startswith(b"\x89PNG")
    assert "switches" in panel.caption and "target → other" in panel.caption
    cap = CapabilityReport(settings=[[1, 1.0], [4, 1.0]], final={"other": [1.0, 2.0]}, base_worse=[0.0, 1.0],
                           descended=[None, None])
    assert cap.summary("loss") == "base worse on at most 1 of tasks over 2 settings; turned toward —"
    assert cap.figures("loss", None) == [Panel("Capability sweep", None,
                                               "the capability report has no values for the base 'loss'")]
    assert ProbeFailure("boom").summary("loss") == "the probe failed (boom)"
    assert Skipped("x").summary("loss") == "the probe was skipped (x)" and Skipped("x").figures("loss", None) == []


@dataclasses.dataclass(frozen=True)
class _Plain(Report):
    """A user's report that overrides nothing."""

    mean: float
    ok: bool
    per_task: list


@dataclasses.dataclass(frozen=True)
class _Drawn(Report):
    """A user's report with its own summary line and figure."""

    ratio: float

    def summary(self, base: str) -> str:
        return f"ratio of {base}: {self.ratio:.2f} (user-written line)"

    def figures(self, base: str, pursued: str | None) -> list[Panel]:
        fig = draw.figure(figsize=(2, 2))
        fig.subplots().plot([0, 1], [0, self.ratio])
        return [Panel("User panel", draw.png(fig), "<b>drawn by the user's report</b>"),
                Panel("Second user panel", None, "the user said so")]


def test_a_page_renders_a_user_registered_probe_without_knowing_its_name(tmp_path):
    assert _Plain(0.5, True, [1, 2]).summary("loss") == "mean 0.5, ok yes"  # default line: the scalar fields
    register_probe("zz_user_drawn", lambda subject: _Drawn(subject.trace().n_tasks / 4))
    register_probe("zz_user_plain", lambda subject: _Plain(0.25, False, [3]))
    try:
        optimizer, family = planted.build("gd")
        verdict = audit(optimizer, family, tasks=4, probes=("zz_user_drawn", "zz_user_plain"))
    finally:
        PROBES.pop("zz_user_drawn")
        PROBES.pop("zz_user_plain")
    page = report.render_html(verdict, None)
    assert "<h3>zz_user_drawn <span class=kind>_Drawn</span></h3>" in page
    assert "ratio of loss: 1.00 (user-written line)" in page
    assert '<img alt="User panel"' in page and "<b>drawn by the user's report</b>" in page
    assert "Second user panel: figure skipped</b> because the user said so." in page
    assert "<p class=summary>mean 0.25, ok no</p>" in page
    text = _text(report.terminal_table(verdict))
    assert "ratio of loss: 1.00 (user-written line)" in text and "mean 0.25, ok no" in text


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
    assert page.count(PNG) == 5 and html.escape(verdict.evidence) in page
    report.write_report(out, verdict, None)  # rewriting replaces both files in place
    assert (out / "report.html").read_text(encoding="utf-8").count(PNG) == 4


def test_terminal_table_renders_label_evidence_and_a_row_per_probe(audited):
    verdict, _ = audited
    text = _text(report.terminal_table(verdict))
    for item in (verdict.label, verdict.pursued, "confidence", "evidence", *verdict.reports):
        assert item in text
    assert "on spill_open it uses the opened affordance" in text
    assert "sensitivity" in text and "turned toward" in text


ENTRIES = [
    Entry("gd", "planted", "quadratic", 0, "robust", "loss", "robust", "loss"),
    Entry("pull", "planted", "quadratic", 1, "proxy_general", "norm", "robust", "loss"),
    Entry("gd_wipes", "planted", "wipes", 0, "proxy_side_effect", "wipes", "proxy_side_effect", "dirt_left"),
]


def test_zoo_table_marks_matches_and_misses():
    text = _text(report.zoo_table(ENTRIES))
    assert text.count("✓") == 1 and text.count("✗") == 2 and "1/3 correct" in text
    assert "pull" in text and "proxy_general" in text and "expected pursued" in text
    any_pursued = [dataclasses.replace(e, expected_pursued=None) for e in ENTRIES]
    text = _text(report.zoo_table(any_pursued))
    assert text.count("✓") == 2 and "expected pursued" not in text


def test_zoo_table_written_to_a_pipe_keeps_every_name_whole(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # what a pipe gets when nothing sets a width (pytest-xdist does)
    entries = [Entry("gd_cookies_capped", "planted", "cookies", 0, "suboptimality", "cookies", "suboptimality",
                     "cookies"),
               Entry("distilled_wipes", "distilled", "wipes", 3, "proxy_side_effect", "wipes", "approximate",
                     "dirt_left"),
               Entry("random_walk", "planted", "quadratic", 0, "not_optimizing", None, "not_optimizing", None)]
    out = io.StringIO()
    console = report.log_console(file=out)  # not a terminal: rich would otherwise assume 80 columns
    assert not console.is_terminal and console.width >= 120
    console.print(report.zoo_table(entries))
    text = out.getvalue()
    assert "…" not in text
    for e in entries:  # each row on one line, every value whole
        row = next(line for line in text.splitlines() if e.name in line)
        assert all(v in row for v in (e.family, e.expected, e.label, str(e.pursued).replace("None", "—")))
    narrow = Console(file=io.StringIO(), width=60)  # a narrow terminal folds values instead of cutting them
    narrow.print(report.zoo_table(entries))
    assert "…" not in narrow.file.getvalue()


def test_zoo_page_prints_the_note_and_the_thresholds_once(audited):
    verdict, traces = audited
    entries = [Entry.from_verdict(verdict, name=f"m{i}", kind="planted", expected=verdict.label,
                                  expected_pursued=None) for i in range(2)]
    sections = [report.zoo_entry_html(entries[0], verdict, traces), report.zoo_entry_html(entries[1], verdict,
                                                                                          figures=False)]
    page = report.render_zoo(entries, sections)
    assert "Scenario zoo: 2/2 as expected" in page and page.count("✓") == 4  # table rows and section titles
    assert page.count("How to read this verdict") == 1 and page.count("id=thresholds") == 1
    assert page.count(PNG) == 5 and "<section>" in page
    assert f"<li><b>cues</b>: {html.escape(verdict.reports['cues'].summary(verdict.base))}</li>" in page
    assert page.index("<table class=zoo>") < page.index("<section>")


def test_the_drawing_helpers_import_without_the_verdict_or_the_catalogue():
    code = ("import sys; import probes.report.draw; import probes.report; "
            "assert not any(m.startswith(('probes.verdict', 'probes.catalogue')) for m in sys.modules), sys.modules; "
            "import probes.catalogue.inverse, probes.verdict")  # and a probe module first, then the verdict
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr


def test_a_verdict_without_the_capability_report_still_renders_and_says_so(audited):
    verdict, traces = audited
    reduced = dataclasses.replace(verdict, reports={k: r for k, r in verdict.reports.items() if k != "capability"})
    page = report.render_html(reduced, traces)
    assert page.count(PNG) == 4  # trajectories, weights, cues, objective: the page draws what the reports it has draw
    assert "<h3>capability " not in page and "Capability sweep" not in page
    assert "Capability sweep: figure skipped" not in report.render_html(verdict, traces)
    text = _text(report.terminal_table(reduced))
    assert not re.search(r"│ capability\s+│", text) and re.search(r"│ gradient_regression\s+│", text)


def test_no_traces_and_skipped_or_failed_probes_are_explained(audited):
    verdict, _ = audited
    reports = dict(verdict.reports, cues=Skipped("the competence gate decided"),
                   gradient_regression=ProbeFailure("LinAlgError: singular matrix"))
    page = report.render_html(dataclasses.replace(verdict, reports=reports), None)
    assert page.count(PNG) == 2  # only the capability sweep and the objective are left
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
