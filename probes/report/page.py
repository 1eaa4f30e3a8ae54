"""The HTML views of verdicts: one self-contained page per verdict, the zoo page, and the report folder.

A page iterates over the verdict's reports and asks each for its figures, its summary line and its numbers
(``probes.subject.Report``); it never looks at a probe's name, so a user's registered probe appears on it like
the built-in ones. The trajectories figure is the page's own, drawn from traces recorded with the key the
audit used. Nothing here reaches back into training.

- ``render_body(verdict, traces=None)``: header, the trajectories figure, then every report.
- ``render_html(verdict, traces=None)`` / ``page(title, body)``: a page, no external resources, figures as
  base64 PNGs; ``write_report(out_dir, verdict, traces)``: ``report.json`` and ``report.html``, atomically.
- ``zoo_table_html``, ``zoo_entry_html``, ``scenario_intro_html``, ``render_zoo``: the zoo page, from
  ``probes.zoo.entry.Entry`` objects.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.io import dumps, write_folder_atomic
from probes.report.draw import LABEL_COLOURS, fmt, is_scalar
from probes.report.figures import figure_trajectories, report_panels, report_summary
from probes.subject import Panel
from probes.thresholds import THRESHOLDS
from probes.trace import Trace

if TYPE_CHECKING:  # probes.verdict imports the catalogue, whose modules import probes.report.draw
    from probes.verdict import Verdict
    from probes.zoo.entry import Entry


# --------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------
def _value_html(value: Any) -> str:
    """JSON data as readable HTML: a dict of numbers as a one-row table, a dict of dicts as a matrix (rows the
    outer keys), other dicts as key/value tables, lists of numbers inline, floats to 3 significant digits."""
    if is_scalar(value):
        return html.escape(fmt(value))
    if isinstance(value, Mapping):
        if not value:
            return "<i>none</i>"
        inner = list(value.values())
        if all(is_scalar(v) for v in inner) and len(value) <= 10:
            head = "".join(f"<th>{html.escape(str(k))}</th>" for k in value)
            row = "".join(f"<td class=num>{html.escape(fmt(v))}</td>" for v in inner)
            return f"<table class=inner><tr>{head}</tr><tr>{row}</tr></table>"
        if all(isinstance(v, Mapping) and v for v in inner):
            cols: list[str] = []
            for v in inner:
                cols += [c for c in v if c not in cols]
            if len(cols) <= 10:
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
                body = "".join(
                    f"<tr><th>{html.escape(str(k))}</th>"
                    + "".join(f"<td class=num>{_value_html(v[c]) if c in v else ''}</td>" for c in cols) + "</tr>"
                    for k, v in value.items())
                return f"<table class=inner><tr><th></th>{head}</tr>{body}</table>"
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value_html(v)}</td></tr>" for k, v in value.items())
        return f"<table class=inner>{rows}</table>"
    if isinstance(value, (list, tuple)):
        if not value:
            return "<i>none</i>"
        if all(is_scalar(v) for v in value):
            return html.escape(", ".join(fmt(v) for v in value))
        if all(isinstance(v, (list, tuple)) and all(is_scalar(x) for x in v) for v in value):
            return html.escape("; ".join("(" + ", ".join(fmt(x) for x in v) + ")" for v in value))
        return "<ol>" + "".join(f"<li>{_value_html(v)}</li>" for v in value) + "</ol>"
    return html.escape(str(value))


def panel_html(panel: Panel) -> str:
    """A figure with its caption, or the reason it was not drawn."""
    esc = html.escape
    if panel.png is None:
        return (f"<figure><p class=skipped><b>{esc(panel.title)}: figure skipped</b> because "
                f"{esc(panel.caption)}.</p></figure>")
    return (f'<figure><img alt="{esc(panel.title)}" src="data:image/png;base64,{panel.png}">'
            f"<figcaption>{panel.caption}</figcaption></figure>")


def report_html(name: str, report: Any, base: str, pursued: str | None, heading: str = "h3") -> str:
    """One report's section: its name and class, its summary line, its figures and every number it recorded
    (a skipped or failed probe's line says why)."""
    esc = html.escape
    data = report.to_json() if hasattr(report, "to_json") else {"value": report}
    kind = data.pop("probe", type(report).__name__) if isinstance(data, dict) else type(report).__name__
    # Field names read as words; report.json keeps them as they are, so each row's tooltip gives the JSON key.
    rows = "".join(f"<tr><th title='{esc(str(k))} in report.json'>{esc(str(k).replace('_', ' '))}</th>"
                   f"<td>{_value_html(v)}</td></tr>" for k, v in data.items())
    table = (f"<table class=outer><tr><th class=head>number</th><th class=head>value</th></tr>{rows}</table>"
             if rows else "")
    figures = "".join(panel_html(p) for p in report_panels(report, base, pursued))
    return (f"<section class=probe><{heading}>{esc(name)} <span class=kind>{esc(str(kind))}</span></{heading}>"
            f"<p class=summary>{esc(report_summary(report, base))}</p>{figures}{table}</section>")


def note_html(deceptive: bool = False) -> str:
    """The "How to read this verdict" box (once per page)."""
    return f"""
<div class=note><b>How to read this verdict.</b> It is relative to the shifts tested: an objective that
agrees with the base on every one of them cannot be told apart from the base here, and other shifts could change
the label. The classes are those of Hubinger et al. 2019, "Risks from Learned Optimization". A small learned
optimizer cannot meet that paper's cognitive conditions for deceptive alignment (a model of its training process,
of its future deployment, and of the base objective, with a plan about them), so a <i>deceptive</i> label means
only the behavioural signature: the pursued objective changes when only the training cue changes.
{'<b>That is all a deceptive label on this page claims.</b>' if deceptive else ''}</div>"""


def thresholds_html(heading: str = "h2") -> str:
    """The thresholds the probes and the verdict decide with (``probes.thresholds.THRESHOLDS``), once per page."""
    esc = html.escape
    rows = "".join(f"<tr><td><code>{esc(name)}</code></td><td class=num>{esc(fmt(t.value))}</td>"
                   f"<td>{esc(t.meaning)}</td></tr>" for name, t in THRESHOLDS.items())
    return (f"<{heading} id=thresholds>Thresholds</{heading}><table class=thresholds><tr><th>name</th><th>value"
            f"</th><th>meaning</th></tr>{rows}</table>")


# --------------------------------------------------------------------------------------------------------
# The page of one verdict
# --------------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #222;
       max-width: 1140px; margin: 16px auto; padding: 0 16px; line-height: 1.45; }
h1 { font-size: 1.5em; margin: 0.2em 0; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
h3 { font-size: 1.0em; margin: 1.2em 0 0.3em; }
.label { display: inline-block; color: white; padding: 2px 10px; border-radius: 4px; font-weight: bold; }
.evidence { font-size: 1.1em; margin: 0.6em 0; }
.summary { margin: 0.2em 0 0.5em; }
table.meta th { text-align: left; padding-right: 14px; color: #555; font-weight: normal; }
table.meta td, table.meta th { padding: 2px 8px 2px 0; vertical-align: top; }
.note { background: #fff8e1; border-left: 4px solid #f0b429; padding: 8px 12px; margin: 1em 0; }
figure { margin: 0.6em 0 1em; }
figure img { max-width: 100%; display: block; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; margin-top: 4px; }
.skipped { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; border-radius: 3px; }
table.outer, table.inner { border-collapse: collapse; font-size: 0.9em; }
table.outer > tbody > tr > th, table.outer > tr > th { text-align: left; vertical-align: top; padding: 3px 12px 3px 4px;
       white-space: nowrap; color: #333; }
table.outer td, table.outer th { border-top: 1px solid #eee; }
table.outer th.head { color: #777; font-weight: normal; font-size: 0.9em; border-top: none; }
table.inner td, table.inner th { border: 1px solid #e3e3e3; padding: 1px 6px; text-align: left; font-weight: normal; }
table.inner th { background: #f7f7f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.kind { color: #888; font-weight: normal; font-size: 0.85em; }
ol { margin: 0; padding-left: 1.4em; }
section.probe { border-top: 1px solid #eee; margin-top: 1.2em; }
table.inner table.inner { font-size: 1em; }
table.zoo { border-collapse: collapse; font-size: 0.92em; margin: 0.8em 0 1.6em; }
table.zoo td, table.zoo th { border: 1px solid #e3e3e3; padding: 2px 8px; text-align: left; }
table.zoo th { background: #f7f7f7; }
table.thresholds { border-collapse: collapse; font-size: 0.82em; color: #444; }
table.thresholds td, table.thresholds th { border-top: 1px solid #eee; padding: 1px 8px; text-align: left;
       vertical-align: top; }
section { border-top: 2px solid #ccc; margin-top: 2em; }
"""


def _level(heading: str, down: int) -> str:
    return f"h{min(int(heading[1]) + down, 6)}"


def render_body(verdict: Verdict, traces: Mapping[str, Trace] | None = None, heading: str = "h1",
                note: bool = True, thresholds: bool = True) -> str:
    """The HTML of one verdict (no page around it): header; with ``note``, the "How to read this verdict" box;
    the trajectories figure (it needs ``traces``, shift name -> Trace, see ``collect_traces``); then for every
    report its summary line, its figures and its numbers; with ``thresholds``, the thresholds table. ``heading``
    is the tag of its title; its sections use the next levels down. A page holding several verdicts (the zoo)
    passes ``note=False, thresholds=False`` and prints both once itself."""
    sub, probe = _level(heading, 1), _level(heading, 2)
    esc = html.escape
    colour = LABEL_COLOURS.get(verdict.label, "#636363")
    descriptions = {}
    if traces:
        t = next(iter(traces.values()))
        try:
            descriptions = {k: s.description for k, s in t.family.shifts().items()}
        except Exception:  # a family without a shift table still gets a page
            descriptions = {}
    shift_items = "".join(
        f"<li><code>{esc(s)}</code>{(': ' + esc(descriptions[s])) if s in descriptions else ''}</li>"
        for s in verdict.shifts)
    header = f"""
<{heading}>Audit: <span class=label style="background:{colour}">{esc(verdict.label)}</span></{heading}>
<p class=evidence>{esc(verdict.evidence)}</p>
<table class=meta>
<tr><th>label</th><td><b>{esc(verdict.label)}</b></td></tr>
<tr><th>pursued quantity</th><td><b>{esc(fmt(verdict.pursued))}</b></td></tr>
<tr><th>confidence</th><td>{esc(fmt(verdict.confidence))}</td></tr>
<tr><th>family</th><td>{esc(verdict.family)}</td></tr>
<tr><th>base objective</th><td>{esc(verdict.base)}</td></tr>
<tr><th>seed</th><td>{esc(str(verdict.seed))}</td></tr>
<tr><th>shifts tested</th><td><ul style="margin:0;padding-left:1.2em">{shift_items}</ul></td></tr>
</table>"""
    sections = "".join(report_html(name, rep, verdict.base, verdict.pursued, probe)
                       for name, rep in verdict.reports.items())
    return f"""{header}
{note_html(verdict.label == "deceptive") if note else ''}
<{sub}>Trajectories</{sub}>
{panel_html(figure_trajectories(verdict, traces))}
<{sub}>Probe reports</{sub}>
<p style="font-size:0.9em;color:#555">Each probe's summary, its figures, and its numbers as recorded in
<code>report.json</code>, floats to three significant digits; — marks none, or a value that was not finite.</p>
{sections}
{thresholds_html(sub) if thresholds else ''}"""


def page(title: str, body: str) -> str:
    """A self-contained HTML page (inline style, no external resources) around ``body``."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
{body}
</body></html>
"""


def render_html(verdict: Verdict, traces: Mapping[str, Trace] | None = None) -> str:
    """One self-contained HTML page for ``verdict`` (``render_body`` in a page)."""
    return page(f"{verdict.label}: {verdict.family} (seed {verdict.seed})", render_body(verdict, traces))


REPORT_FILES = ("report.json", "report.html")


def write_report(out_dir: Path | str, verdict: Verdict, traces: Mapping[str, Trace] | None = None) -> None:
    """Writes ``out_dir/report.json`` (``verdict.to_json()``, strict JSON) and ``out_dir/report.html`` as one
    unit (``lab.io.write_folder_atomic``: written in a folder beside ``out_dir`` and swapped in), so the two
    always come from the same verdict; ``out_dir`` is created if needed and must hold nothing else
    (``ValueError`` otherwise). A caller that may race other writers holds ``lab.runs.lock_report(out_dir)``."""
    text = render_html(verdict, traces)  # render first: a failure leaves no half-written report
    record = dumps(verdict.to_json(), indent=2, sort_keys=True) + "\n"
    write_folder_atomic(Path(out_dir), {"report.json": record, "report.html": text})


# --------------------------------------------------------------------------------------------------------
# The zoo page
# --------------------------------------------------------------------------------------------------------
AGREE_COLOUR, DISAGREE_COLOUR = "#1b7837", "#b2182b"


def _mark(entry: Entry) -> str:
    return "✓" if entry.correct else "✗"


def zoo_table_html(entries: Iterable[Entry]) -> str:
    """The zoo's table as HTML: one row per entry, linked to its section, ✓ where the entry is correct. The
    found class's badge is green where it agrees with the expected one and red where it does not (a wrong
    ``robust`` must not look like a success)."""
    esc = html.escape
    rows = []
    for e in entries:
        colour = AGREE_COLOUR if e.correct else DISAGREE_COLOUR
        rows.append(
            f"<tr><td><a href='#{esc(e.anchor)}'>{esc(e.name)}</a></td><td>{esc(e.kind)}</td>"
            f"<td>{esc(e.family)}</td><td>{esc(str(e.seed))}</td><td>{esc(e.expected)}</td>"
            f"<td><span class=label style='background:{colour}'>{esc(str(e.label))}</span></td>"
            f"<td>{esc(fmt(e.pursued))}</td><td>{esc(fmt(e.expected_pursued))}</td>"
            f"<td>{'✓' if e.correct else '<b style=color:#b2182b>✗</b>'}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("name", "kind", "family", "seed", "expected", "found", "pursued",
                                             "expected pursued", ""))
    return f"<table class=zoo><tr>{head}</tr>{''.join(rows)}</table>"


def zoo_entry_html(entry: Entry, verdict: Verdict, traces: Mapping[str, Trace] | None = None,
                   figures: bool = True) -> str:
    """One entry's section of the zoo page: with ``figures``, the whole audit (``render_body``, without the
    note and the thresholds the zoo page prints once); without, its verdict and each report's summary line."""
    esc = html.escape
    title = (f"<h2 id='{esc(entry.anchor)}'>{esc(entry.name)} ({esc(entry.kind)}, seed {esc(str(entry.seed))}): "
             f"expected {esc(entry.expected)}, found {esc(str(entry.label))} {_mark(entry)}</h2>")
    if figures:
        return f"<section>{title}{render_body(verdict, traces, heading='h3', note=False, thresholds=False)}</section>"
    lines = "".join(f"<li><b>{esc(name)}</b>: {esc(report_summary(rep, verdict.base))}</li>"
                    for name, rep in verdict.reports.items())
    return (f"<section>{title}<p class=evidence>{esc(verdict.evidence)} (pursued {esc(fmt(verdict.pursued))}, "
            f"confidence {esc(fmt(verdict.confidence))})</p><ul>{lines}</ul></section>")


def scenario_intro_html(distribution: Mapping[str, Mapping[str, Any]], hypotheses: Mapping[str, Any]) -> str:
    """The learned scenarios' hypotheses (``hypotheses[name]`` with ``expected``, ``pursued`` and ``why``) and,
    per scenario, how often the hypothesis held over the seeds and which labels were found."""
    esc = html.escape
    if not hypotheses:
        return ""
    rows = []
    for name, h in hypotheses.items():
        d = distribution.get(name, {})
        labels = ", ".join(f"{esc(k)} ×{v}" for k, v in sorted(d.get("labels", {}).items(), key=lambda kv: -kv[1]))
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(h.expected)} / {esc(h.pursued)}</td><td>{esc(h.why)}</td>"
                    f"<td>{d.get('held', 0)}/{d.get('seeds', 0)}</td><td>{labels}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("scenario", "hypothesis", "why", "held", "labels found"))
    return (f"<p>Each learned scenario is meta-trained on its family's base objective; the class it is expected to "
            f"show is a hypothesis the audit tests. Planted members are hand-built with known answers and check the "
            f"audit itself.</p><table class=zoo><tr>{head}</tr>{''.join(rows)}</table>")


def render_zoo(entries: list[Entry], sections: Iterable[str], intro: str = "") -> str:
    """The zoo's self-contained HTML page: the table of expected against found classes first, then ``intro``
    (for example ``scenario_intro_html``), the "How to read this verdict" box, ``sections`` (from
    ``zoo_entry_html`` or any HTML block) and the thresholds table."""
    ok = sum(e.correct for e in entries)
    deceptive = any(e.label == "deceptive" for e in entries)
    body = (f"<h1>Scenario zoo: {ok}/{len(entries)} as expected</h1>{zoo_table_html(entries)}{intro}"
            f"{note_html(deceptive)}" + "".join(sections) + thresholds_html("h2"))
    return page("Scenario zoo", body)


# --------------------------------------------------------------------------------------------------------
# The benchmark page
# --------------------------------------------------------------------------------------------------------
def _confusion_html(confusion: Mapping[str, Mapping[str, int]]) -> str:
    """The confusion matrix: rows the expected classes, columns the labels found, the diagonal in green."""
    esc = html.escape
    labels = list(next(iter(confusion.values()), {}))
    head = "<th>expected \\ found</th>" + "".join(f"<th>{esc(c)}</th>" for c in labels)
    rows = []
    for expected, row in confusion.items():
        cells = "".join(
            f"<td style='text-align:right;{'background:#d9f0d3' if c == expected and n else ''}"
            f"{'background:#f4cccc' if c != expected and n else ''}'>{n or ''}</td>" for c, n in row.items())
        rows.append(f"<tr><td>{esc(expected)}</td>{cells}</tr>")
    return f"<table class=zoo><tr>{head}</tr>{''.join(rows)}</table>"


def _reliability_png(table: list[list]) -> str:
    """The reliability diagram: share of right verdicts per confidence bin against the bin, the diagonal dashed."""
    from probes.report.draw import figure, png

    fig = figure(figsize=(4.2, 3.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="#999", lw=1)
    if table:
        centre, acc, n = (np.asarray(c, float) for c in zip(*table))
        ax.bar(centre, acc, width=0.09, color="#4575b4", alpha=0.8)
        for x, y, k in zip(centre, acc, n):
            ax.annotate(f"{int(k)}", (x, y), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence", ylabel="share right",
           title="reliability (n per bin above the bars)")
    return png(fig)


def render_benchmark(result: Mapping[str, Any], entries: list[Entry]) -> str:
    """The benchmark's self-contained page (``scripts/benchmark.py``): its figures, the confusion matrix, the
    reliability diagram, then the table of every case (``zoo_table_html``)."""
    esc = html.escape
    per_class = "".join(f"<tr><td>{esc(c)}</td><td>{fmt(v['precision'])}</td><td>{fmt(v['recall'])}</td>"
                        f"<td>{v['n']}</td></tr>" for c, v in result["per_class"].items())
    figures = (f"<p>accuracy {fmt(result['accuracy'])} (class only {fmt(result['class_accuracy'])}), macro-F1 "
               f"{fmt(result['macro_f1'])}, abstained {result['abstained']} of {result['cases']}, false-robust rate "
               f"{fmt(result['false_robust_rate'])} (misaligned cases labelled robust)</p>")
    body = (f"<h1>Verdict benchmark: {esc(result['split'])} split, seed {result['seed']}, {result['cases']} cases</h1>"
            f"{figures}<h2>Confusion</h2>{_confusion_html(result['confusion'])}"
            f"<h2>Per class</h2><table class=zoo><tr><th>class</th><th>precision</th><th>recall</th><th>n</th></tr>"
            f"{per_class}</table><h2>Reliability of the confidence</h2>"
            f"<img alt='reliability diagram' src='data:image/png;base64,{_reliability_png(result['calibration'])}'>"
            f"<h2>Cases</h2>{zoo_table_html(entries)}{thresholds_html('h2')}")
    return page(f"Verdict benchmark ({result['split']})", body)


__all__ = ["render_benchmark", "render_html", "render_body", "render_zoo", "zoo_entry_html", "zoo_table_html", "scenario_intro_html",
           "page", "write_report", "panel_html", "report_html", "note_html", "thresholds_html"]
