"""Meta-training into a run folder (``lab.runs``: ``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``history.jsonl``, ``summary.json``), one writer at a time, resumable bit for bit (also from an older checkpoint
when the newest is damaged), and loading a run's meta-parameters back without writing into the folder."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lab import runs
from lab.io import dumps, write_json_atomic
from lab.meta.evaluate import compare_with_adam, evaluation_warnings
from lab.meta.train import MetaConfig, MetaState, build, distribute, init_state, make_meta_step, meta_params_sha256
from lab.runs import RunError  # noqa: F401  (callers catch it from here)

# Meta-steps whose metrics are fetched from the device together: fetching every step would make the host wait
# for the device after every step (1.16x the time of the default run, scripts/bench.py).
METRICS_BLOCK = 25

# Fields that may differ when a run is resumed: they do not change the trajectory of the meta-parameters.
RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every", "eval_tasks")


def _normalize(saved: dict) -> dict:
    """A saved config as this code reads it (fields added since it was written at their defaults);
    ``ValueError`` naming the field of a damaged one."""
    return MetaConfig.from_json(saved).to_json()


def prepare(config: MetaConfig, out: Path, resume: bool) -> dict | None:
    """Checks the request against the folder; raises ``RunError`` before touching anything. Returns the saved
    config of the run being resumed, ``None`` for a fresh one (``lab.runs.prepare``)."""
    return runs.prepare(config.to_json(), config.validate, out, resume, RESUMABLE_CHANGES, "meta_steps", _normalize)


def _restore(config: MetaConfig, out: Path, manager, repair: bool = False) -> MetaState:
    """The newest intact checkpoint's state (``lab.runs.restore``; a writer ``repair``s)."""
    return runs.restore(manager, init_state(config), config.to_json(), out, RESUMABLE_CHANGES, repair=repair,
                        normalize=_normalize)


def read_config(out: Path | str) -> MetaConfig:
    """The ``MetaConfig`` of a run folder; ``RunError`` naming ``config.json`` and the field when it is damaged."""
    data = runs.read_config(out)
    try:
        config = MetaConfig.from_json(data)
        config.validate()
    except ValueError as e:
        raise RunError(f"{Path(out) / 'config.json'}: {e}") from None
    return config


def eval_key(config: MetaConfig) -> jax.Array:
    """The key of a run's final evaluation against tuned Adam, derived from the run's seed in this one place:
    stream 1 of ``key(seed)`` (``fold_in``), apart from the three keys meta-training splits from it
    (``lab.meta.train.init_state``): the held-out tasks come from a stream of their own."""
    return jax.random.fold_in(jax.random.key(config.seed), 1)


@functools.lru_cache(maxsize=8)
def _compiled_meta_step(config: MetaConfig):
    """The jitted meta-step of ``config``, made once per config in a process (a resume, or a second run of
    the same config, reuses its compilation)."""
    return jax.jit(make_meta_step(config))


def train(config: MetaConfig, out: Path | str, resume: bool = False,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Meta-trains ``config`` into the run folder ``out`` (continuing its newest checkpoint if ``resume``),
    evaluates the result against tuned Adam and returns the summary that is also written to
    ``out/summary.json``. ``on_step(step, metrics)`` is called for every meta-step when its
    metrics reach the host, in blocks of ``METRICS_BLOCK`` steps (for progress bars); ``metrics.jsonl`` gets
    one line per step with the wall-clock ``time`` (Unix seconds) at which its block was fetched."""
    out = Path(out)
    prepare(config, out, resume)  # a refused request touches nothing, not even the lock
    with runs.lock_run(out):  # one writer for the whole run: a second is refused, naming this process
        return _train_locked(config, out, resume, on_step)


def _train_locked(config: MetaConfig, out: Path, resume: bool, on_step: Callable[[int, dict], None] | None) -> dict:
    """``train``'s body, holding the folder's lock. The checks run again under it: another writer may have
    changed the folder between the first check and the lock. The config is written only once the checkpoint
    to continue from is found intact and of the same config, so a refused resume leaves the folder as it was."""
    saved = prepare(config, out, resume)
    runs.clean_leftovers(out)
    manager = runs.checkpoints(out)
    metrics_path = out / "metrics.jsonl"
    try:
        state = _restore(config, out, manager, repair=True)
        start = int(state.step)
        runs.trim_metrics(metrics_path, start)
    except BaseException:
        manager.close()
        raise
    write_json_atomic(out / "config.json", config.to_json())
    runs.record_session(out, saved, config.to_json(), start, "meta_steps")

    state = distribute(state, config)
    meta_step = _compiled_meta_step(config)

    with open(metrics_path, "a") as log:
        pending = []  # (step, device metrics) not yet fetched: the host waits for the device once per block

        def flush():
            fetched = jax.device_get([metrics for _, metrics in pending])
            now = time.time()
            for (step, _), metrics in zip(pending, fetched):
                record = {"step": step, **{k: float(v) for k, v in metrics.items()}, "time": now}
                log.write(dumps(record) + "\n")  # strict JSON: a non-finite metric is null
                if on_step is not None:
                    on_step(step, record)
            log.flush()
            pending.clear()

        for step in range(start + 1, config.meta_steps + 1):
            state, metrics = meta_step(state)
            pending.append((step, metrics))
            checkpoint = step % config.checkpoint_every == 0 or step == config.meta_steps
            if checkpoint or len(pending) == METRICS_BLOCK:
                flush()  # before a checkpoint, so the metrics always reach at least the checkpointed step
            if checkpoint:
                runs.save(manager, step, state, config.to_json())
    manager.wait_until_finished()
    manager.close()

    lopt, _, _ = build(config)
    meta = jax.device_get(state.meta)
    family, optimizer = config.family_obj(), lopt.optimizer(meta)
    evaluation = compare_with_adam(family, optimizer, eval_key(config), config.eval_tasks)
    # Traps that a good-looking meta-loss hides: said in the terminal and kept in the summary.
    warnings = evaluation_warnings(family, optimizer, eval_key(config), evaluation, config.eval_tasks)
    for line in warnings:
        print(f"warning: {out}: {line}", file=sys.stderr)
    metrics = runs.read_metrics(metrics_path)
    last = metrics[-1] if metrics else {}
    summary = {
        "family": config.family, "optimizer": config.optimizer, "estimator": config.estimator,
        "meta_steps": config.meta_steps, "seed": config.seed,
        "final_meta_loss": last.get("meta_loss"), "skipped_meta_steps": last.get("skipped_total"),
        "meta_params_sha256": meta_params_sha256(meta), "eval": evaluation, "warnings": warnings,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def load_meta(out: Path | str):
    """The config and final meta-parameters of a finished or checkpointed run folder."""
    out = Path(out)
    config = read_config(out)
    manager = runs.checkpoints(out, read_only=True)  # a reader writes nothing into the run folder
    try:
        if not manager.all_steps():
            raise RunError(f"{out} holds no checkpoint yet: train it first")
        state = _restore(config, out, manager)
    finally:
        manager.close()
    return config, jax.tree.map(np.asarray, state.meta)
