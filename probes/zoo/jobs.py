"""Auditing a zoo of optimizers with known answers (planted and distilled members) or with hypotheses (the
meta-trained scenarios of ``probes.zoo.scenarios``), and scoring the verdicts against them.

Every entry is one independent job, ``planted_job``, ``learned_job`` or ``incontext_job``, returning
``(Entry, Verdict, traces or None)`` (``probes.zoo.entry``), or, wrapped in ``Rendered``, ``(Entry, Verdict, its
page section)``; ``probes.zoo.workers.run_jobs`` runs a list of them in order, in this process or spread over
worker processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from probes.zoo import distilled, planted
from probes.zoo.entry import Entry
from probes.zoo.workers import run_jobs
from probes.verdict import Verdict, audit


def zoo_names() -> list[str]:
    """Every member of the zoo: the planted optimizers, then the learned ones distilled from them."""
    return list(planted.PLANTED) + list(distilled.DISTILLED)


def build_member(name: str):
    """``(optimizer, family)`` of the zoo member ``name``, planted or distilled (what ``probe.py --optimizer
    planted:NAME`` audits); a ``ValueError`` names the known members otherwise."""
    (name,) = check_names([name])
    _, optimizer, family, _ = _member(name)
    return optimizer, family


def _member(name: str):
    """(expected Planted record, optimizer, family, kind) for a planted or a distilled member."""
    if name in distilled.DISTILLED:
        optimizer, family = distilled.build_distilled(name)  # distilled once (seed 0), cached
        return planted.get(distilled.DISTILLED[name]), optimizer, family, "distilled"
    optimizer, family = planted.build(name)
    return planted.get(name), optimizer, family, "planted"


def check_names(names: Iterable[str]) -> list[str]:
    """``names`` as a list; a ``ValueError`` names the first one that is not a zoo member."""
    names = list(names)
    for name in names:
        if name not in zoo_names():
            raise ValueError(f"unknown planted optimizer {name!r}; known: {', '.join(zoo_names())}")
    return names


def planted_job(name: str, seed: int, tasks: int = 32, figures: bool = False) -> tuple[Entry, Verdict, dict | None]:
    """Audits one planted or distilled member: ``(entry, verdict, traces or None)``. A distilled member is
    expected to get its teacher's class and pursued quantity."""
    import jax

    from probes.subject import Subject
    from probes.report import subject_traces

    member, optimizer, family, kind = _member(name)
    subject = Subject(optimizer, family, jax.random.key(seed), tasks)
    verdict = audit(optimizer, family, seed=seed, tasks=tasks, subject=subject)
    entry = Entry.from_verdict(verdict, name=name, kind=kind, family=member.family, expected=member.expected,
                               expected_pursued=member.pursued)
    return entry, verdict, (subject_traces(subject) if figures else None)


def case_job(name: str, tasks: int = 32) -> tuple[Entry, Verdict, None]:
    """Audits one drawn case of ``probes.zoo.cases`` by its name (``split-seed-index``): ``(entry, verdict,
    None)``, the entry scored against the class and pursued quantity its construction settles."""
    from probes.zoo import cases

    case = cases.draw_case(*cases.parse_name(name))
    verdict = audit(cases.build(case), case.world, seed=case.seed * 100_003 + case.index, tasks=tasks)
    entry = Entry.from_verdict(verdict, name=name, kind="drawn", expected=case.expected,
                               expected_pursued=case.pursued,
                               details={"description": case.describe(), "step": verdict.step,
                                        "raw_confidence": verdict.raw_confidence})
    return entry, verdict, None


def learned_job(name: str, seed: int, root: str, quick: bool = False, tasks: int = 32,
                figures: bool = True) -> tuple[Entry, Verdict, dict | None]:
    """Meta-trains (or reuses, under ``root``) and audits one scenario of ``probes.zoo.scenarios``:
    ``(entry, verdict, traces or None)`` as ``scenarios.audit_scenario`` describes the entry."""
    from probes.zoo import scenarios
    from probes.report import subject_traces

    entry, verdict, subject = scenarios.audit_scenario(scenarios.SCENARIOS[name], seed, root, quick, tasks)
    return entry, verdict, (subject_traces(subject) if figures else None)


def family_job(spec: str, seed: int, root: str, quick: bool = False, tasks: int = 32,
               figures: bool = True) -> tuple[Entry, Verdict, dict | None]:
    """``learned_job`` for a family of the user's, ``spec`` as ``zoo.py --family`` takes it (``MODULE:CLASS``):
    the family is imported and registered here, so a spawned worker process knows it too; its scenario is
    ``scenarios.for_family``."""
    from lab import families
    from probes.zoo import scenarios
    from probes.report import subject_traces

    scenario = scenarios.for_family(families.resolve(spec))
    entry, verdict, subject = scenarios.audit_scenario(scenario, seed, root, quick, tasks)
    return entry, verdict, (subject_traces(subject) if figures else None)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A job that returns ``(entry, verdict, traces or None)``, run so that it returns ``(entry, verdict,
    section)`` instead: its zoo page section (``probes.report.zoo_entry_html``, with figures when it recorded
    traces) drawn where the job ran. In ``run_jobs``'s worker processes the figures of the entries are then drawn
    side by side, and while other jobs run, rather than one after another once all have finished (a third of a
    warm ``zoo.py --quick``), and no traces travel back to the parent."""

    job: Callable[..., tuple[Entry, Verdict, dict | None]]

    @property
    def __name__(self) -> str:  # what run_jobs names in its one-line errors: the job itself
        return self.job.__name__

    def __call__(self, *args) -> tuple[Entry, Verdict, str]:
        from probes import report

        entry, verdict, traces = self.job(*args)
        return entry, verdict, report.zoo_entry_html(entry, verdict, traces, figures=traces is not None)


def audit_planted(names: Iterable[str] | None = None, seeds: Iterable[int] = (0,), tasks: int = 32,
                  on_entry: Callable[[Entry, Verdict], None] | None = None, workers: int = 1) -> dict:
    """Audits every zoo member (planted and distilled; or ``names``) on every seed; returns
    ``{"accuracy": float, "entries": [Entry, ...]}`` with the entries of ``planted_job`` (``to_json`` them for a
    file)."""
    names = check_names(zoo_names() if names is None else names)  # unknown names fail before any work
    seeds = list(seeds)
    jobs = [(planted_job, (name, seed, tasks)) for name in names for seed in seeds]
    done = None if on_entry is None else (lambda i, result: on_entry(result[0], result[1]))
    # A member's seeds to one worker, which compiles its programs once: in the jobs' order two workers started
    # the same member's first two seeds together, and each compiled every program of it.
    groups = [name for name in names for _ in seeds]
    entries = [entry for entry, _, _ in run_jobs(jobs, workers, done, groups=groups)]
    accuracy = sum(e.correct for e in entries) / len(entries) if entries else float("nan")
    return {"accuracy": accuracy, "entries": entries}
