"""Meta-training into a run folder (``lab.runs``: ``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``summary.json``), resumable bit for bit, and loading a run's meta-parameters back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lab import runs
from lab.io import write_json_atomic
from lab.meta.evaluate import compare_with_adam
from lab.meta.train import MetaConfig, MetaState, build, distribute, init_state, make_meta_step, meta_params_sha256
from lab.runs import RunError  # noqa: F401  (callers catch it from here)

# Fields that may differ when a run is resumed: they do not change the trajectory of the meta-parameters.
RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every", "eval_tasks")


def prepare(config: MetaConfig, out: Path, resume: bool) -> None:
    """Checks the request against the folder; raises ``RunError`` before touching anything."""
    runs.prepare(config.to_json(), config.validate, out, resume, RESUMABLE_CHANGES)


def _restore(config: MetaConfig, out: Path, manager) -> MetaState:
    return runs.restore(manager, init_state(config), config.to_json(), out, RESUMABLE_CHANGES)


def eval_key(config: MetaConfig) -> jax.Array:
    """The key of a run's final evaluation against tuned Adam, derived from the run's seed in this one place:
    stream 1 of ``key(seed)`` (``fold_in``), apart from the three keys meta-training splits from it
    (``lab.meta.train.init_state``): the held-out tasks come from a stream of their own."""
    return jax.random.fold_in(jax.random.key(config.seed), 1)


def train(config: MetaConfig, out: Path | str, resume: bool = False,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Meta-trains ``config`` into the run folder ``out`` (continuing its newest checkpoint if ``resume``),
    evaluates the result against tuned Adam and returns the summary that is also written to
    ``out/summary.json``. ``on_step(step, metrics)`` is called after every meta-step (for progress bars)."""
    out = Path(out)
    prepare(config, out, resume)
    write_json_atomic(out / "config.json", config.to_json())
    manager = runs.checkpoints(out)
    state = _restore(config, out, manager)
    start = int(state.step)
    metrics_path = out / "metrics.jsonl"
    runs.trim_metrics(metrics_path, start)

    state = distribute(state, config)
    meta_step = jax.jit(make_meta_step(config))

    with open(metrics_path, "a") as log:
        for step in range(start, config.meta_steps):
            state, metrics = meta_step(state)
            record = {"step": step + 1, **{k: float(v) for k, v in metrics.items()}}
            log.write(json.dumps(record) + "\n")
            log.flush()
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.meta_steps:
                runs.save(manager, step + 1, state, config.to_json())
            if on_step is not None:
                on_step(step + 1, record)
    manager.wait_until_finished()
    manager.close()

    lopt, _, _ = build(config)
    meta = jax.device_get(state.meta)
    evaluation = compare_with_adam(config.family_obj(), lopt.optimizer(meta),
                                   eval_key(config), config.eval_tasks)
    metrics = runs.read_metrics(metrics_path)
    last = metrics[-1] if metrics else {}
    summary = {
        "family": config.family, "optimizer": config.optimizer, "estimator": config.estimator,
        "meta_steps": config.meta_steps, "seed": config.seed,
        "final_meta_loss": last.get("meta_loss"), "skipped_meta_steps": last.get("skipped_total"),
        "meta_params_sha256": meta_params_sha256(meta), "eval": evaluation,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def load_meta(out: Path | str):
    """The config and final meta-parameters of a finished or checkpointed run folder."""
    out = Path(out)
    config = MetaConfig.from_json(runs.read_config(out))
    manager = runs.checkpoints(out)
    state = _restore(config, out, manager)
    manager.close()
    return config, jax.tree.map(np.asarray, state.meta)
