"""Auditing a zoo of optimizers with known answers and scoring the verdict against them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from probes import distill, planted
from probes.verdict import Verdict, audit


def zoo_names() -> list[str]:
    """Every member of the zoo: the planted optimizers, then the learned ones distilled from them."""
    return list(planted.PLANTED) + list(distill.DISTILLED)


def _member(name: str):
    """(expected Planted record, optimizer, family, kind) for a planted or a distilled member."""
    if name in distill.DISTILLED:
        optimizer, family = distill.build_distilled(name)  # distilled once (seed 0), cached
        return planted.get(distill.DISTILLED[name]), optimizer, family, "distilled"
    optimizer, family = planted.build(name)
    return planted.get(name), optimizer, family, "planted"


def audit_planted(names: Iterable[str] | None = None, seeds: Iterable[int] = (0,), tasks: int = 32,
                  on_entry: Callable[[dict, Verdict], None] | None = None) -> dict:
    """Audits every zoo member (planted and distilled; or ``names``) on every seed; returns
    ``{"accuracy": float, "entries": [{"name", "kind", "family", "seed", "expected", "label", "pursued",
    "expected_pursued", "correct"}, ...]}``, correct meaning both class and pursued quantity match. A distilled
    member is expected to get its teacher's class and pursued quantity."""
    entries = []
    for name in (zoo_names() if names is None else list(names)):
        if name not in distill.DISTILLED:
            planted.get(name)  # unknown names fail before any work
        for seed in seeds:
            member, optimizer, family, kind = _member(name)
            verdict = audit(optimizer, family, seed=seed, tasks=tasks)
            entry = {"name": name, "kind": kind, "family": member.family, "seed": seed, "expected": member.expected,
                     "label": verdict.label, "pursued": verdict.pursued, "expected_pursued": member.pursued,
                     "correct": verdict.label == member.expected and verdict.pursued == member.pursued}
            entries.append(entry)
            if on_entry is not None:
                on_entry(entry, verdict)
    accuracy = sum(e["correct"] for e in entries) / len(entries) if entries else float("nan")
    return {"accuracy": accuracy, "entries": entries}
