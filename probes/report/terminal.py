"""The terminal views: ``rich`` tables of one verdict (a row per report, each report's own summary line) and of a
zoo (a row per ``probes.zoo.entry.Entry``).

A log must be readable: ``rich`` assumes 80 columns when output is not a terminal and would cut a zoo's names
to a few characters (``quadrat…``). So ``log_console()`` is as wide as the tables when output goes to a pipe or a
file, and the zoo table's columns fold a long value onto a second line rather than cut it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from probes.report.draw import fmt
from probes.report.figures import report_summary

if TYPE_CHECKING:
    from probes.verdict import Verdict
    from probes.zoo.entry import Entry


LOG_WIDTH = 200  # columns of a console writing to a pipe or a file


def log_console(**kw) -> Console:
    """A ``rich`` console for scripts: the terminal's width on a terminal; ``LOG_WIDTH`` columns when output is a
    pipe or a file (unless ``COLUMNS`` or ``width`` says otherwise), so tables are never cut to 80 columns."""
    console = Console(**kw)
    if not console.is_terminal and "width" not in kw and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console


def progress(console: Console | None = None, transient: bool = False):
    """A ``rich`` progress display for the scripts' long work: what is running, a bar, done/total, elapsed
    time and the estimated time left (on stderr by default, so stdout keeps the tables). Off a terminal it
    draws nothing live; the scripts print a line per finished item as well."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console or log_console(stderr=True),
                    transient=transient)


def _no_numbers(report) -> bool:
    """A probe that was skipped or failed (its summary line says why)."""
    from probes.verdict import ProbeFailure, Skipped  # here: probes.verdict imports the catalogue, which imports us

    return isinstance(report, (ProbeFailure, Skipped))


def terminal_table(verdict: Verdict) -> Table:
    """A ``rich`` table: label, pursued quantity, confidence, evidence, then one row per report with its
    summary line (dim for a probe that was skipped or failed)."""
    colour = {"robust": "green", "approximate": "green", "not_optimizing": "dim", "capability_failure": "dim",
              "unidentified": "dim", "deceptive": "bold red"}.get(verdict.label, "yellow")
    table = Table(title=f"Audit of {verdict.family} (base {verdict.base}, seed {verdict.seed})", show_header=True,
                  header_style="bold", expand=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("label", Text(verdict.label, style=colour))
    table.add_row("pursued", fmt(verdict.pursued))
    table.add_row("confidence", fmt(verdict.confidence))
    table.add_row("evidence", verdict.evidence)
    table.add_row("shifts", ", ".join(verdict.shifts))
    table.add_section()
    for name, report in verdict.reports.items():
        table.add_row(name, Text(report_summary(report, verdict.base), style="dim" if _no_numbers(report) else ""))
    return table


def zoo_table(entries: Iterable[Entry], title: str = "Planted zoo") -> Table:
    """A ``rich`` table of zoo entries: name, family, seed, expected class, label, pursued quantity, expected
    pursued quantity (when any entry expects one) and ✓ where ``Entry.correct``. The identifying columns never
    lose characters: on a console too narrow for them a value folds onto the next line (``overflow="fold"``)."""
    entries = list(entries)
    with_pursued = any(e.expected_pursued is not None for e in entries)
    table = Table(title=title, caption=f"{sum(e.correct for e in entries)}/{len(entries)} correct",
                  header_style="bold")
    for col in ("name", "family", "seed", "expected", "label", "pursued") + (("expected pursued",) if with_pursued
                                                                            else ()):
        table.add_column(col, overflow="fold")
    table.add_column("", justify="center", no_wrap=True)
    for e in entries:
        row = [e.name, e.family, str(e.seed), e.expected, Text(str(e.label), style="" if e.label == e.expected
                                                                else "red"), fmt(e.pursued)]
        if with_pursued:
            row.append(fmt(e.expected_pursued) if e.expected_pursued is not None else "any")
        row.append(Text("✓", style="green") if e.correct else Text("✗", style="bold red"))
        table.add_row(*row)
    return table


__all__ = ["log_console", "progress", "terminal_table", "zoo_table"]
