"""Run folders: ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (orbax) and ``summary.json``.

A run folder is never mixed with another run and never half-written: configs and summaries are written to a
temporary file and renamed, orbax commits checkpoints atomically, and every check on the user's input happens
before anything in the folder is touched.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from lab.io import write_json_atomic, write_text_atomic
from lab.meta.evaluate import compare_with_adam
from lab.meta.train import MetaConfig, MetaState, build, distribute, init_state, make_meta_step, meta_params_sha256

# Fields that may differ when a run is resumed: they do not change the trajectory of the meta-parameters.
RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every", "eval_tasks")


class RunError(Exception):
    """A problem with the user's request, reported as one line."""


def _config_mismatch(saved: dict, config: MetaConfig) -> list[str]:
    new = config.to_json()
    keys = sorted(set(saved) | set(new))
    return [k for k in keys if k not in RESUMABLE_CHANGES and saved.get(k) != new.get(k)]


def _checkpoints(out: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager((out / "checkpoints").absolute(), options=options)


def prepare(config: MetaConfig, out: Path, resume: bool) -> None:
    """Checks the request against the folder; raises ``RunError`` before touching anything."""
    try:
        config.validate()
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
        differ = _config_mismatch(saved, config)
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} in the run, {config.to_json().get(k)!r} now" for k in differ)
            raise RunError(f"cannot resume {out}: its checkpoint has a different config ({detail})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise RunError(f"cannot write out folder {out}: {e.strerror or e}") from None


def _restore(config: MetaConfig, out: Path, manager: ocp.CheckpointManager) -> MetaState:
    template = init_state(config)
    step = manager.latest_step()
    if step is None:
        return template
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), config=ocp.args.JsonRestore()))
    differ = _config_mismatch(restored["config"], config)
    if differ:
        raise RunError(f"cannot resume {out}: checkpoint {step} has a different config ({', '.join(differ)})")
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored["state"]))


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drops metric lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def train(config: MetaConfig, out: Path | str, resume: bool = False,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Meta-trains ``config`` into the run folder ``out`` (continuing its newest checkpoint if ``resume``),
    evaluates the result against tuned Adam and returns the summary that is also written to
    ``out/summary.json``. ``on_step(step, metrics)`` is called after every meta-step (for progress bars)."""
    out = Path(out)
    prepare(config, out, resume)
    write_json_atomic(out / "config.json", config.to_json())
    manager = _checkpoints(out)
    state = _restore(config, out, manager)
    start = int(state.step)
    metrics_path = out / "metrics.jsonl"
    _trim_metrics(metrics_path, start)

    state = distribute(state, config)
    meta_step = jax.jit(make_meta_step(config))

    with open(metrics_path, "a") as log:
        for step in range(start, config.meta_steps):
            state, metrics = meta_step(state)
            record = {"step": step + 1, **{k: float(v) for k, v in metrics.items()}}
            log.write(json.dumps(record) + "\n")
            log.flush()
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.meta_steps:
                manager.save(step + 1, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_json())))
            if on_step is not None:
                on_step(step + 1, record)
    manager.wait_until_finished()
    manager.close()

    lopt, _, _ = build(config)
    meta = jax.device_get(state.meta)
    evaluation = compare_with_adam(config.family_obj(), lopt.optimizer(meta),
                                   jax.random.fold_in(jax.random.key(config.seed), 1), config.eval_tasks)
    last = _last_metrics(metrics_path)
    summary = {
        "family": config.family, "optimizer": config.optimizer, "estimator": config.estimator,
        "meta_steps": config.meta_steps, "seed": config.seed,
        "final_meta_loss": last.get("meta_loss"), "skipped_meta_steps": last.get("skipped_total"),
        "meta_params_sha256": meta_params_sha256(meta), "eval": evaluation,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def _last_metrics(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line]
    return json.loads(lines[-1]) if lines else {}


def load_meta(out: Path | str):
    """The config and final meta-parameters of a finished or checkpointed run folder."""
    out = Path(out)
    config = MetaConfig.from_json(json.loads((out / "config.json").read_text()))
    manager = _checkpoints(out)
    state = _restore(config, out, manager)
    manager.close()
    return config, jax.tree.map(np.asarray, state.meta)
