"""One row of a zoo: a member's audit set against the class (and pursued quantity) expected of it.

Every job of ``probes.zoo.jobs`` returns its member's ``Entry``; the tables, the zoo page, ``zoo.json`` and the
accuracies read ``Entry.correct``, the one place where an audit is scored against its expectation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from probes.subject import to_json

if TYPE_CHECKING:
    from probes.verdict import Verdict

KINDS = ("planted", "distilled", "learned", "incontext", "drawn")
# Kinds whose expectation is a hypothesis the audit tests (meta-trained members), not a known answer (planted by
# hand, or distilled from a planted teacher): zoo.json scores the two groups apart.
HYPOTHESIS_KINDS = ("learned", "incontext")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A zoo member's audit against its expected answer.

    Attributes:
      name, kind, family, seed: the member (``kind`` one of ``KINDS``), the family it was audited on, the seed.
      expected: the class expected of it.
      expected_pursued: the pursued quantity expected of it; ``None`` accepts any pursued quantity.
      label, pursued, confidence, evidence: the verdict.
      details: kind-specific extras, flattened into ``to_json()`` (``run``, ``reused``, ``eval_ratio``, the
        reports of a scenario's own probes under ``extra``, an in-context model's alignment numbers, ...).
    """

    name: str
    kind: str
    family: str
    seed: int
    expected: str
    expected_pursued: str | None
    label: str
    pursued: str | None
    confidence: float | None = None
    evidence: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown entry kind {self.kind!r}; known: {', '.join(KINDS)}")
        clash = set(self.details) & ({f.name for f in dataclasses.fields(self)} | {"correct"})
        if clash:  # flattened into to_json(), they would overwrite the entry's own fields
            raise ValueError(f"details may not use the entry's own keys: {', '.join(sorted(clash))}")

    @property
    def correct(self) -> bool:
        """The class matches, and the pursued quantity too unless any is accepted (``expected_pursued is None``)."""
        return self.label == self.expected and (self.expected_pursued is None or self.pursued == self.expected_pursued)

    @property
    def is_hypothesis(self) -> bool:
        """Whether ``expected`` is a hypothesis under test (learned, in-context) rather than a known answer."""
        return self.kind in HYPOTHESIS_KINDS

    @property
    def anchor(self) -> str:
        """The id of the entry's section on the zoo page."""
        return f"{self.kind}-{self.name}-{self.seed}"

    def to_json(self) -> dict:
        """The entry as ``zoo.json`` holds it: the fields, ``correct``, then ``details`` flattened in."""
        out = {"name": self.name, "kind": self.kind, "family": self.family, "seed": self.seed,
               "expected": self.expected, "label": self.label, "pursued": self.pursued,
               "expected_pursued": self.expected_pursued, "correct": self.correct,
               "confidence": self.confidence, "evidence": self.evidence}
        return to_json({**out, **self.details})

    @classmethod
    def from_verdict(cls, verdict: Verdict, *, name: str, kind: str, expected: str, expected_pursued: str | None,
                     family: str | None = None, details: dict[str, Any] | None = None) -> Entry:
        """The entry of ``verdict`` for member ``name`` (family and seed from the verdict unless ``family`` is
        given)."""
        return cls(name=name, kind=kind, family=verdict.family if family is None else family, seed=verdict.seed,
                   expected=expected, expected_pursued=expected_pursued, label=verdict.label,
                   pursued=verdict.pursued, confidence=float(verdict.confidence), evidence=verdict.evidence,
                   details=dict(details or {}))
