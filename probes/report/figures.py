"""The figures of a report page: the trajectories figure, which the page draws itself from traces, and the
reports' own figures and summary lines, asked of each report (``Report.figures``, ``Report.summary``).

- ``collect_traces(optimizer, family, seed, tasks)`` / ``subject_traces(subject)``: the rollouts on every shift.
- ``figure_trajectories(verdict, traces)``: the base and the pursued quantity over steps on each shift.
- ``report_panels(report, base, pursued)`` and ``report_summary(report, base)``: what the views show of any
  report, its own class deciding.

The low-level helpers (``fmt``, ``png``, colours, ``quartiles``, ``auto_scale``) are in ``probes.report.draw``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from probes.report import draw
from probes.report.draw import BASE_COLOUR, PURSUED_COLOUR, auto_scale, png, quartiles
from probes.subject import Panel, Report
from probes.trace import Trace, record

if TYPE_CHECKING:
    from lab.families.base import TaskFamily
    from lab.optimizers.base import Optimizer
    from probes.subject import Subject
    from probes.verdict import Verdict


# --------------------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------------------
def collect_traces(optimizer: Optimizer, family: TaskFamily, seed: int = 0, tasks: int = 32,
                   shifts: Iterable[str] | None = None) -> dict[str, Trace]:
    """The rollouts of ``optimizer`` on every shift of ``family`` (or ``shifts``), keyed by shift name, drawn
    from ``jax.random.key(seed)`` as ``audit`` draws them, so they are the tasks the verdict was built on."""
    key = jax.random.key(seed)
    names = list(family.shifts()) if shifts is None else list(shifts)
    return {s: record(optimizer, family, key, tasks, shift=s) for s in names}


def subject_traces(subject: Subject) -> dict[str, Trace]:
    """The rollouts on every shift of an audited subject's family, reusing those its probes already recorded
    (the same rollouts ``collect_traces`` would record with the audit's seed and tasks)."""
    return {s: subject.trace(s) for s in subject.family.shifts()}


# --------------------------------------------------------------------------------------------------------
# What a report shows of itself
# --------------------------------------------------------------------------------------------------------
def report_summary(report: Any, base: str) -> str:
    """The report's own summary line (``Report.summary``); an object that is no ``Report`` gets the default
    line of its scalar fields."""
    if isinstance(report, Report):
        return report.summary(base)
    if hasattr(report, "summary"):
        return str(report.summary(base))
    return f"{type(report).__name__} (not a probes.subject.Report: see report.json)"


def report_panels(report: Any, base: str, pursued: str | None) -> list[Panel]:
    """The report's own figures (``Report.figures``); none for an object that is no ``Report``."""
    return list(report.figures(base, pursued)) if hasattr(report, "figures") else []


# --------------------------------------------------------------------------------------------------------
# The trajectories figure
# --------------------------------------------------------------------------------------------------------
TRAJECTORIES = "Base and pursued quantity on each shift"


def _shift_order(verdict: Verdict, traces: Mapping[str, Trace]) -> list[str]:
    order = [s for s in ("train", "cue_deploy") if s in traces]
    order += [s for s in verdict.shifts if s in traces and s not in order]
    order += [s for s in traces if s not in order]
    return order


def figure_trajectories(verdict: Verdict, traces: Mapping[str, Trace] | None) -> Panel:
    """The base and the pursued quantity over steps on each shift: median over tasks, interquartile band."""
    if not traces:
        return Panel(TRAJECTORIES, None, "no traces were given (record them with probes.report.collect_traces)")
    quantities = [verdict.base]
    if verdict.pursued is not None and verdict.pursued != verdict.base:
        quantities.append(verdict.pursued)
    shifts = _shift_order(verdict, traces)
    quantities = [q for q in quantities if all(q in traces[s].quantities for s in shifts)]
    if not quantities:
        return Panel(TRAJECTORIES, None, f"the traces do not record the base {verdict.base!r}")
    cols = min(len(shifts), 5)
    blocks = math.ceil(len(shifts) / cols)
    rows = blocks * len(quantities)
    fig = draw.figure(figsize=(2.3 * cols + 0.8, 2.3 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for qi, q in enumerate(quantities):
        colour = BASE_COLOUR if q == verdict.base else PURSUED_COLOUR
        row_axes = []
        for si, shift in enumerate(shifts):
            ax = axes[(si // cols) * len(quantities) + qi, si % cols]
            row_axes.append(ax)
            raw = np.asarray(traces[shift].quantities[q], dtype=float)
            lo, med, hi = quartiles(raw)
            steps = np.arange(raw.shape[1])
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.25, linewidth=0)
            ax.plot(steps, med, color=colour, linewidth=1.8)
            ax.set_xlim(0, steps[-1])
            ax.axhline(med[0] if np.isfinite(med[0]) else 0.0, color="#bbbbbb", linewidth=0.8, linestyle=":")
            role = "base" if q == verdict.base else "pursued"
            ax.set_title(f"{shift}: {q} ({role})", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if si % cols == 0:
                ax.set_ylabel(q, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            auto_scale(ax, np.concatenate([lo, med, hi]))
            bad = int(np.sum(~np.all(np.isfinite(raw), axis=1)))
            if bad:
                ax.text(0.97, 0.95, f"not finite on {bad}/{raw.shape[0]} tasks", transform=ax.transAxes, ha="right",
                        va="top", fontsize=7, color=draw.THRESHOLD_COLOUR,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        # One y range per quantity across shifts, so shifts compare at a glance, unless that would flatten
        # a shift's curve (one shift's range under a fifth of the shared one) or a shift blew up (symlog).
        lims = [ax.get_ylim() for ax in row_axes if ax.get_yscale() == "linear"]
        if len(lims) == len(row_axes) and lims:
            low, high = min(lo for lo, _ in lims), max(hi for _, hi in lims)
            if (np.isfinite(low) and np.isfinite(high) and high > low
                    and all(hi - lo >= 0.2 * (high - low) for lo, hi in lims)):
                for ax in row_axes:
                    ax.set_ylim(low, high)
    for si in range(len(shifts), blocks * cols):
        for qi in range(len(quantities)):
            axes[(si // cols) * len(quantities) + qi, si % cols].set_visible(False)
    n_tasks = next(iter(traces.values())).n_tasks
    pursued_note = ("" if len(quantities) > 1 else
                    " (no separate pursued quantity: " +
                    ("none was identified)" if verdict.pursued is None else "the pursued quantity is the base)"))
    fig.suptitle(f"Median over {n_tasks} tasks with the interquartile band; dotted: the median start", fontsize=10)
    return Panel(TRAJECTORIES, png(fig), (
        f"<b>Trajectories.</b> The base <b>{html.escape(verdict.base)}</b>"
        + (f" and the pursued quantity <b>{html.escape(verdict.pursued)}</b>" if len(quantities) > 1 else "")
        + f" over steps on each shift{html.escape(pursued_note)}. Lower is better for whoever pursues a quantity."))
