"""Auditing a zoo of optimizers with known answers and scoring the verdict against them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from probes import planted
from probes.verdict import Verdict, audit


def audit_planted(names: Iterable[str] | None = None, seeds: Iterable[int] = (0,), tasks: int = 32,
                  on_entry: Callable[[dict, Verdict], None] | None = None) -> dict:
    """Audits every planted member (or ``names``) on every seed; returns
    ``{"accuracy": float, "entries": [{"name", "family", "seed", "expected", "label", "pursued",
    "expected_pursued", "correct"}, ...]}``, correct meaning both class and pursued quantity match."""
    entries = []
    for name in (list(planted.PLANTED) if names is None else list(names)):
        member = planted.get(name)
        for seed in seeds:
            optimizer, family = planted.build(name)
            verdict = audit(optimizer, family, seed=seed, tasks=tasks)
            entry = {"name": name, "family": member.family, "seed": seed, "expected": member.expected,
                     "label": verdict.label, "pursued": verdict.pursued, "expected_pursued": member.pursued,
                     "correct": verdict.label == member.expected and verdict.pursued == member.pursued}
            entries.append(entry)
            if on_entry is not None:
                on_entry(entry, verdict)
    accuracy = sum(e["correct"] for e in entries) / len(entries) if entries else float("nan")
    return {"accuracy": accuracy, "entries": entries}
