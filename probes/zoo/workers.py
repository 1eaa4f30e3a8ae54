"""Running independent jobs in worker processes: ``run_jobs`` runs a list of ``(fn, args)`` in order, in this
process or spread over fresh worker processes (one XLA compilation at a time per process, so on a CPU with several
cores a zoo or a benchmark finishes sooner), with a schedule that keeps jobs sharing compiled programs on one
worker (``Schedule``). The zoo's jobs are in ``probes.zoo.jobs``.

This module imports no part of the lab but the compilation cache, so a worker process starts without importing the
probes: a job's own module is imported when the job reaches it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from lab import compile_cache


class WorkerDied(RuntimeError):
    """A worker process of ``run_jobs`` ended without a result (killed, most often by the kernel when the machine
    ran out of memory); the message is one line naming the job."""


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
