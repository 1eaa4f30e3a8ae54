"""Run folders, for every trainer of the lab: ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (orbax) and
``summary.json``.

A run folder is never mixed with another run and never half-written: configs and summaries are written to a
temporary file and renamed, orbax commits checkpoints atomically, and every check on the user's input happens
before anything in the folder is touched. ``config.json`` names its ``kind`` (``"meta"``: a learned optimizer
meta-trained by ``lab.meta.run``; ``"incontext"``: an in-context learner trained by ``lab.incontext.train``), so
``lab.load.load`` can rebuild the optimizer of any run folder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lab.io import write_text_atomic


class RunError(Exception):
    """A problem with the user's request, reported as one line."""


def config_mismatch(saved: dict, new: dict, resumable: tuple[str, ...]) -> list[str]:
    """The config fields that differ between a saved run and a new request, ignoring ``resumable`` ones."""
    keys = sorted(set(saved) | set(new))
    return [k for k in keys if k not in resumable and saved.get(k) != new.get(k)]


def prepare(config: dict, validate: Callable[[], None], out: Path, resume: bool,
            resumable: tuple[str, ...]) -> None:
    """Checks a request (``config``, its JSON form, and ``validate()``, which raises ``ValueError``) against the
    folder ``out``; raises ``RunError`` before touching anything."""
    try:
        validate()
    except ValueError as e:
        raise RunError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise RunError(f"out folder {out} exists and is not a folder")
    existing = out.is_dir() and any(out.iterdir())
    if existing and not resume:
        raise RunError(f"out folder {out} is not empty; pass --resume to continue that run or choose another folder")
    if existing and resume:
        saved_path = out / "config.json"
        if not saved_path.is_file():
            raise RunError(f"cannot resume: {out} holds no config.json of a training run")
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"cannot resume: {saved_path} is unreadable ({e})") from None
        differ = config_mismatch(saved, config, resumable)
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} in the run, {config.get(k)!r} now" for k in differ)
            raise RunError(f"cannot resume {out}: its checkpoint has a different config ({detail})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise RunError(f"cannot write out folder {out}: {e.strerror or e}") from None


def checkpoints(out: Path) -> ocp.CheckpointManager:
    """The folder's orbax checkpoint manager (the two newest kept, synchronous, atomic commits)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager((Path(out) / "checkpoints").absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict) -> None:
    """Checkpoints ``state`` (any pytree) at ``step`` with the run's config beside it."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               config=ocp.args.JsonSave(config)))


def restore(manager: ocp.CheckpointManager, template: Any, config: dict, out: Path,
            resumable: tuple[str, ...]) -> Any:
    """The newest checkpoint's state in the structure of ``template`` (``template`` itself when there is none);
    ``RunError`` if it was written with another config."""
    step = manager.latest_step()
    if step is None:
        return template
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), config=ocp.args.JsonRestore()))
    differ = config_mismatch(restored["config"], config, resumable)
    if differ:
        raise RunError(f"cannot resume {out}: checkpoint {step} has a different config ({', '.join(differ)})")
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored["state"]))


def trim_metrics(path: Path, last_step: int) -> None:
    """Drops metric lines written after the checkpoint a run resumes from (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict]:
    """Every metrics line of a run, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line] if Path(path).exists() else []


def read_config(out: Path | str) -> dict:
    """A run folder's ``config.json``; ``RunError`` when there is none or it is not JSON."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise RunError(f"{out} is not a run folder (it holds no config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path} is unreadable ({e})") from None
