"""The optimizer of any run folder, whichever trainer wrote it (``config.json`` names its ``kind``)."""

from __future__ import annotations

from pathlib import Path

from lab import runs
from lab.incontext.train import load_learner
from lab.meta.run import load_meta


def load(out: Path | str):
    """``(optimizer, family, untrained)`` of any run folder: the trained optimizer, the family it was trained on
    and the same architecture at its initial parameters (the control of linear probes; ``None`` where the
    trainer has none to give). A meta-trained optimizer comes as a ``Parametric`` (its meta-parameters an
    argument of the programs that run it, so runs of one architecture share their compilation)."""
    kind = runs.read_config(out).get("kind", "meta")
    if kind == "incontext":
        return load_learner(out)
    if kind == "meta":
        config, meta = load_meta(out)
        lopt = config.learned_optimizer()
        return lopt.parametric(meta), config.family_obj(), None
    raise runs.RunError(f"{out}: unknown run kind {kind!r} in config.json")
