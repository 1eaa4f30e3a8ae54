"""Auditing a zoo of optimizers with known answers (planted and distilled members) or with hypotheses (the
meta-trained scenarios of ``probes.zoo.scenarios``), and scoring the verdicts against them.

Every entry is one independent job, ``planted_job``, ``learned_job`` or ``incontext_job``, returning
``(Entry, Verdict, traces or None)`` (``probes.zoo.entry``), or, wrapped in ``Rendered``, ``(Entry, Verdict, its
page section)``; ``run_jobs`` runs a list of them in order, in this process or spread over worker processes (one
XLA compilation at a time per process, so on a CPU with several cores the zoo finishes sooner).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from lab import compile_cache
from probes.zoo import distilled, planted
from probes.zoo.entry import Entry
from probes.verdict import Verdict, audit


class WorkerDied(RuntimeError):
    """A worker process of ``run_jobs`` ended without a result (killed, most often by the kernel when the machine
    ran out of memory); the message is one line naming the job."""


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


# How often a worker process checks that the process that started it is alive (``_worker_start``).
PARENT_CHECK_SECONDS = 1.0


def _worker_start(parent: int) -> None:
    """A worker process's set-up: the parent's compilation cache (``compile_cache.inherit``), and a watch that ends
    the worker once ``parent`` is gone. A command killed outright (SIGKILL, or SIGTERM, whose default action runs no
    clean-up) cannot shut its pool down, and a pool's workers never learn of it: they finished the case they were
    auditing, then waited for the next one for ever, each holding gigabytes of compiled programs."""
    compile_cache.inherit()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)  # re-parented: the parent died; nothing of this worker's is kept (results go to the parent)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


_NOT_STARTED = object()  # the group of a worker that has not started (``None`` is a group key)


class Schedule:
    """Which job each of ``workers`` runs next, given a group key per job (``run_jobs``): a worker keeps to its
    group while it has jobs not yet started, then moves to the largest group no other worker is on (or, when every
    group left is taken, helps with the largest). Jobs of a group start in their order; one group only (``None``
    for every job) is the jobs' order."""

    def __init__(self, groups: list[Hashable], workers: int):
        self.pending: dict[Hashable, deque[int]] = {}  # group -> its jobs not yet started, in order
        for i, key in enumerate(groups):
            self.pending.setdefault(key, deque()).append(i)
        self.on: list[Hashable] = [_NOT_STARTED] * workers  # the group each worker is on

    def next(self, worker: int) -> int | None:
        """The index of the next job for ``worker``, or ``None`` when every job has started."""
        if not self.pending.get(self.on[worker]):
            left = [k for k, q in self.pending.items() if q]
            if not left:
                return None
            others = {k for w, k in enumerate(self.on) if w != worker}
            self.on[worker] = max(left, key=lambda k: (k not in others, len(self.pending[k])))
        return self.pending[self.on[worker]].popleft()


def run_jobs(jobs: list[tuple[Callable, tuple]], workers: int = 1,
             on_done: Callable[[int, Any], None] | None = None, jobs_per_worker: int | None = None,
             groups: list[Hashable] | None = None) -> list[Any]:
    """Runs ``fn(*args)`` for every ``(fn, args)`` in ``jobs`` and returns the results in the jobs' order;
    ``on_done(index, result)`` is called as each finishes. With ``workers > 1`` the jobs run in that many fresh
    worker processes (``spawn``: JAX does not survive ``fork``), each job as it would run alone.

    ``jobs_per_worker``: a worker is replaced by a fresh process after that many jobs (with one worker too, the
    jobs then run in a worker process). Jobs that each compile programs of their own (the benchmark's drawn
    cases) need it: every compiled program stays mapped in its process, and a long-lived one runs out of memory
    maps (LLVM's "Unable to allocate section memory") after a few dozen cases. (Each worker is a one-process
    executor of its own, replaced by hand: ``max_tasks_per_child`` deadlocks on Python 3.11.)

    ``groups``: a key per job (the benchmark's: its world's structure). A worker takes the jobs of one group in
    turn and, when it runs out, the largest group no other worker is on, so jobs that share compiled programs run
    in one process, which compiles them once. Without it, jobs start in their order."""
    results: list[Any] = [None] * len(jobs)
    recycle = jobs_per_worker is not None and len(jobs) > jobs_per_worker
    if (workers <= 1 and not recycle) or len(jobs) <= 1:
        for i, (fn, args) in enumerate(jobs):
            results[i] = fn(*args)
            if on_done is not None:
                on_done(i, results[i])
        return results
    context = multiprocessing.get_context("spawn")
    slots: list[list] = [[None, 0] for _ in range(max(1, min(workers, len(jobs))))]  # [executor, jobs run]
    schedule = Schedule(groups if groups is not None else [None] * len(jobs), len(slots))
    running: dict = {}  # future -> (job index, slot)

    def submit(slot: int) -> None:
        i = schedule.next(slot)
        if i is None:
            return
        fn, args = jobs[i]
        executor, count = slots[slot]
        if executor is not None and jobs_per_worker is not None and count >= jobs_per_worker:
            executor.shutdown()
            executor = None
        if executor is None:
            executor, count = ProcessPoolExecutor(1, mp_context=context, initializer=_worker_start,
                                                  initargs=(os.getpid(),)), 0
        slots[slot] = [executor, count + 1]
        running[executor.submit(fn, *args)] = (i, slot)

    try:
        for slot in range(len(slots)):
            submit(slot)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i, slot = running.pop(future)
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    fn, args = jobs[i]
                    what = fn.__name__ + (f" of {args[0]!r}" if args else "")
                    raise WorkerDied(f"a worker process died running job {i + 1} of {len(jobs)} ({what}), most "
                                     "often because the machine ran out of memory; try fewer worker processes "
                                     "(--jobs, where the command has it)") from None
                if on_done is not None:
                    on_done(i, results[i])
                submit(slot)
    finally:
        for executor, _ in slots:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    return results


def default_workers() -> int:
    """Worker processes for a zoo: one per CPU core (at most 4) on a CPU backend, 1 on an accelerator (where
    processes would compete for its memory)."""
    import jax

    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


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
