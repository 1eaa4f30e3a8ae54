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

from lab import runs, sharding
from lab.io import dumps, write_json_atomic
from lab.meta.evaluate import compare_with_adam, evaluation_rows, evaluation_warnings
from lab.meta.train import (MetaConfig, MetaState, build, distribute, init_state, make_meta_step,
                             meta_params_sha256, program_config)
from lab.runs import RunError  # noqa: F401  (callers catch it from here)

# Meta-steps whose metrics are fetched from the device together: fetching every step would make the host wait
# for the device after every step (1.16x the time of the default run, scripts/bench.py).
METRICS_BLOCK = 25

# Fields that may differ when a run is resumed: they do not change the trajectory of the meta-parameters.
RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every", "eval_tasks", "eval_horizons", "eval_shifts")


def _resumable(config: MetaConfig) -> tuple[str, ...]:
    """The fields a resume may change: a decayed meta learning rate's schedule spans the run's ``meta_steps``, so
    extending such a run would change its trajectory (``MetaConfig.meta_lr_final``)."""
    if config.meta_lr_final is None:
        return RESUMABLE_CHANGES
    return tuple(name for name in RESUMABLE_CHANGES if name != "meta_steps")


def _normalize(saved: dict) -> dict:
    """A saved config as this code reads it (fields added since it was written at their defaults);
    ``ValueError`` naming the field of a damaged one."""
    return MetaConfig.from_json(saved).to_json()


def prepare(config: MetaConfig, out: Path, resume: bool) -> dict | None:
    """Checks the request against the folder; raises ``RunError`` before touching anything. Returns the saved
    config of the run being resumed, ``None`` for a fresh one (``lab.runs.prepare``)."""
    return runs.prepare(config.to_json(), config.validate, out, resume, _resumable(config), "meta_steps",
                        _normalize)


def _restore(config: MetaConfig, out: Path, manager, repair: bool = False) -> MetaState:
    """The newest intact checkpoint's state (``lab.runs.restore``; a writer ``repair``s)."""
    return runs.restore(manager, init_state(config), config.to_json(), out, _resumable(config), repair=repair,
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


def _compiled_meta_step(config: MetaConfig):
    """The jitted meta-step of ``config``, made once per ``program_config`` in a process: a resume, another seed or
    a longer run of the same config reuses its compilation."""
    return _jitted_meta_step(program_config(config))


@functools.lru_cache(maxsize=8)
def _jitted_meta_step(config: MetaConfig):
    return jax.jit(make_meta_step(config))


def train(config: MetaConfig, out: Path | str, resume: bool = False,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Meta-trains ``config`` into the run folder ``out`` (continuing its newest checkpoint if ``resume``),
    evaluates the result against tuned Adam and returns the summary that is also written to
    ``out/summary.json``. ``on_step(step, metrics)`` is called for every meta-step when its
    metrics reach the host, in blocks of ``METRICS_BLOCK`` steps (for progress bars); ``metrics.jsonl`` gets
    one line per step with the wall-clock ``time`` (Unix seconds) at which its block was fetched.

    In a multi-process run (``lab.sharding.initialize``) every process calls it with the same arguments: the
    task axis is sharded over every device of every process, process 0 alone writes the folder (lock, config,
    metrics, checkpoints, summary) and evaluates, and the others read the checkpoint a resumed run continues
    from (``out`` on a filesystem they share) and return their summary without ``eval``."""
    out = Path(out)
    if jax.process_count() > 1 and config.tasks % jax.device_count():
        raise RunError(f"{config.tasks} tasks do not split evenly over the {jax.device_count()} devices of "
                       f"{jax.process_count()} processes; give --tasks a multiple of {jax.device_count()}")
    if not sharding.is_writer():
        return _train_follower(config, out, on_step)
    start = _Start()
    try:
        prepare(config, out, resume)  # a refused request touches nothing, not even the lock
        with runs.lock_run(out):  # one writer for the whole run: a second is refused, naming this process
            return _train_locked(config, out, resume, on_step, start)
    except BaseException:
        if not start.told:
            start.tell(None, None)  # the other processes stop too instead of waiting for process 0
        raise


class _Start:
    """Where process 0 starts a multi-process run, told to the other processes once (nothing to tell alone):
    the step of the checkpoint it continues from, and its state's checksum (``lab.runs.state_sha256``), or that
    it could not start; then whether every process restored that same state."""

    def __init__(self):
        self.told = False

    def tell(self, step: int | None, digest: str | None) -> None:
        self.told = True
        if jax.process_count() == 1:
            return
        sharding.broadcast(np.asarray([step is not None, step or 0], np.int64))
        sharding.broadcast(np.frombuffer(bytes.fromhex(digest or "0" * 64), np.uint8))
        if step is not None and not sharding.agree(True):
            raise RunError("another process could not restore the checkpoint process 0 continues from: the run "
                           "folder must be on a filesystem every process reads")

    @staticmethod
    def hear() -> tuple[int | None, str]:
        """On the other processes: process 0's step (``None``: it could not start) and checksum."""
        header = sharding.broadcast(np.zeros(2, np.int64))
        digest = sharding.broadcast(np.zeros(32, np.uint8))
        return (int(header[1]) if header[0] else None), np.asarray(digest, np.uint8).tobytes().hex()


def _train_follower(config: MetaConfig, out: Path, on_step: Callable[[int, dict], None] | None) -> dict:
    """``train`` on a process other than 0: the same meta-steps on its share of the tasks, writing nothing."""
    step, digest = _Start.hear()
    if step is None:
        raise RunError(f"process 0 could not start the run in {out} (its error says why)")
    state, problem = init_state(config), None
    if step > 0:  # restored by every process from the folder; checked to be the state process 0 restored
        try:
            manager = runs.checkpoints(out, read_only=True)
            try:
                state = _restore(config, out, manager)
            finally:
                manager.close()
            if int(state.step) != step or runs.state_sha256(state, config.to_json()) != digest:
                problem = f"process {jax.process_index()} restored another state than process 0 from {out}"
        except RunError as e:
            problem = f"process {jax.process_index()}: {e}"
    if not sharding.agree(problem is None):
        raise RunError(problem or "another process could not restore the checkpoint process 0 continues from")
    state = _meta_train(config, distribute(state, config), step, on_step)
    meta = sharding.gather(state.meta)
    return {"family": config.family, "optimizer": config.optimizer, "estimator": config.estimator,
            "meta_steps": config.meta_steps, "seed": config.seed, "process": jax.process_index(),
            "meta_params_sha256": meta_params_sha256(meta)}


def _meta_train(config: MetaConfig, state: MetaState, start: int, on_step: Callable[[int, dict], None] | None,
                log=None, manager=None) -> MetaState:
    """The meta-steps from ``start`` on; the metrics go to ``log`` (an open ``metrics.jsonl``) and the checkpoints
    to ``manager`` where given (process 0), to ``on_step`` on every process."""
    meta_step = _compiled_meta_step(config)
    pending = []  # (step, device metrics) not yet fetched: the host waits for the device once per block

    def flush():
        fetched = jax.device_get([metrics for _, metrics in pending])
        now = time.time()
        for (step, _), metrics in zip(pending, fetched):
            record = {"step": step, **{k: float(v) for k, v in metrics.items()}, "time": now}
            if log is not None:
                log.write(dumps(record) + "\n")  # strict JSON: a non-finite metric is null
            if on_step is not None:
                on_step(step, record)
        if log is not None:
            log.flush()
        pending.clear()

    for step in range(start + 1, config.meta_steps + 1):
        state, metrics = meta_step(state)
        pending.append((step, metrics))
        checkpoint = step % config.checkpoint_every == 0 or step == config.meta_steps
        if checkpoint or len(pending) == METRICS_BLOCK:
            flush()  # before a checkpoint, so the metrics always reach at least the checkpointed step
        if checkpoint:
            # Written once, by process 0: a state sharded over several processes is first gathered whole (every
            # process takes part); alone, the state is saved as it is.
            host = state if jax.process_count() == 1 else sharding.gather(state)
            if manager is not None:
                runs.save(manager, step, host, config.to_json())
    return state


def _train_locked(config: MetaConfig, out: Path, resume: bool, on_step: Callable[[int, dict], None] | None,
                  start_told: _Start) -> dict:
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
        alone = jax.process_count() == 1
        start_told.tell(start, runs.state_sha256(state, config.to_json()) if start and not alone else None)
    except BaseException:
        manager.close()
        raise
    write_json_atomic(out / "config.json", config.to_json())
    runs.record_session(out, saved, config.to_json(), start, "meta_steps")

    state = distribute(state, config)
    with open(metrics_path, "a") as log:
        state = _meta_train(config, state, start, on_step, log, manager)
    manager.wait_until_finished()
    manager.close()

    lopt, _, _ = build(config)
    meta = sharding.gather(state.meta)
    family, optimizer = config.family_obj(), lopt.parametric(meta)  # one evaluation program for every run
    evaluation = compare_with_adam(family, optimizer, eval_key(config), config.eval_tasks)
    # Traps that a good-looking meta-loss hides: said in the terminal and kept in the summary.
    warnings = evaluation_warnings(family, optimizer, eval_key(config), evaluation, config.eval_tasks)
    if config.eval_horizons or config.eval_shifts:
        evaluation["rows"] = evaluation_rows(family, optimizer, eval_key(config), config.eval_tasks,
                                             config.eval_horizons, config.eval_shifts)
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
