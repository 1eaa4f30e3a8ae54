"""Run folders, for every trainer of the lab: ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (orbax) and
``summary.json``.

A run folder is never mixed with another run and never half-written:

- one writer at a time: ``lock_run`` holds an exclusive ``flock`` on ``.lock`` in the folder for the writer's
  life (the file records its pid, so a second writer is told which process holds it; the kernel drops the lock
  of a process that dies, so its stale lock file is simply taken over);
- configs and summaries are written to a temporary file and renamed, orbax commits checkpoints atomically, and
  every checkpoint carries a SHA-256 of its state and config, verified on restore: a damaged newest checkpoint
  falls back to the newest intact one with a one-line warning, and a run with none intact is refused;
- every check on the user's input happens before anything in the folder is touched, a resume with another
  config (a smaller step count included) is refused, a larger step count is continued and recorded in
  ``history.jsonl`` (one line per writer: when, which process, from which step, to how many);
- a torn last line of ``metrics.jsonl`` (a writer killed mid-line) is cut back to the checkpointed step;
- readers (``checkpoints(out, read_only=True)``, as ``load_meta`` and ``load_run`` use it) never write into
  the folder, and refuse a run without checkpoints rather than hand back untrained parameters.

``config.json`` names its ``kind`` (``"meta"``: a learned optimizer meta-trained by ``lab.meta.run``;
``"incontext"``: an in-context learner trained by ``lab.incontext.train``), so ``lab.load.load`` can rebuild the
optimizer of any run folder; ``config_from_json`` reads one with a message naming the file and the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lab.io import dumps, remove_stray_temporaries, write_text_atomic

LOCK_NAME = ".lock"
HISTORY = "history.jsonl"
INTEGRITY_FORMAT = 1


class RunError(Exception):
    """A problem with the user's request, reported as one line."""


def warn(message: str) -> None:
    """A one-line warning on stderr (a fallback taken, a run extended): the run goes on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------
# One writer at a time
# --------------------------------------------------------------------------------------------------------
def _read_holder(fd: int, wait: float = 1.0) -> int | None:
    """The pid recorded in an open lock file, waiting up to ``wait`` s for a holder that has just taken the lock
    and not yet written it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit() or time.monotonic() >= deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.02)


def _describe(pid: int | None) -> str:
    """``process PID (its command line)`` as far as the system tells."""
    if pid is None:
        return "another process"
    try:
        cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        cmd = ""
    if len(cmd) > 100:
        cmd = cmd[:97] + "..."
    return f"process {pid}" + (f" ({cmd})" if cmd else "")


@contextlib.contextmanager
def lock(path: Path | str, what: Path | str) -> Iterator[int | None]:
    """Holds an exclusive lock on the lock file ``path`` (created if missing, removed on release) for the
    body; yields the pid of a dead holder whose stale lock was taken over, or ``None``. ``RunError`` names the
    process holding it when it is taken (``what``: the folder, for the message).

    ``fcntl.flock`` is released by the kernel when its process dies, so a killed writer never blocks the next
    one; the file only says who holds it. A lock file unlinked by its previous holder between our ``open`` and
    our ``flock`` is not the lock any more, so we check we hold the file the path names, and retry otherwise."""
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot lock {what}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunError(f"cannot lock {what}: {e.strerror or e}") from None
            raise RunError(f"{what} is in use by {_describe(holder)}: wait for it to finish or stop it") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # we locked a file its holder had just removed: not the lock any more
    stale = _read_holder(fd, wait=0)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield stale
    finally:
        path.unlink(missing_ok=True)  # while still holding it: the next writer finds no file, or a fresh one
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def live_writer(path: Path | str) -> int | None:
    """The pid recorded in the lock file ``path`` if that process is alive, else ``None``; reads only, so it
    never competes with a writer for the lock (a reused pid could name the wrong process: messages only)."""
    try:
        text = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit() or int(text) == os.getpid():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except OSError:  # alive, but another user's
        pass
    return int(text)


def lock_run(out: Path | str) -> contextlib.AbstractContextManager:
    """The writer's lock of the run folder ``out`` (``out/.lock``; ``out`` must exist)."""
    return lock(Path(out) / LOCK_NAME, out)


def lock_report(folder: Path | str) -> contextlib.AbstractContextManager:
    """The writer's lock of a report folder: ``.NAME.lock`` beside it (the folder itself is swapped in whole by
    ``lab.io.write_folder_atomic``, so its lock cannot live inside it); creates the parent folder if needed."""
    absolute = Path(os.path.abspath(folder))  # "reports/a/.." or "." still have a name and a parent
    try:
        absolute.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot write {folder}: {e.strerror or e}") from None
    return lock(absolute.parent / f".{absolute.name}.lock", folder)


def _entries(out: Path) -> list[Path]:
    """The folder's content, without the lock and a killed writer's temporary files."""
    return [p for p in out.iterdir() if p.name != LOCK_NAME and not (p.name.startswith(".") and
                                                                      p.name.endswith(".tmp"))]


def config_mismatch(saved: dict, new: dict, resumable: tuple[str, ...]) -> list[str]:
    """The config fields that differ between a saved run and a new request, ignoring ``resumable`` ones."""
    keys = sorted(set(saved) | set(new))
    return [k for k in keys if k not in resumable and saved.get(k) != new.get(k)]


def prepare(config: dict, validate: Callable[[], None], out: Path, resume: bool,
            resumable: tuple[str, ...], steps_field: str | None = None,
            normalize: Callable[[dict], dict] | None = None) -> dict | None:
    """Checks a request (``config``, its JSON form, and ``validate()``, which raises ``ValueError``) against the
    folder ``out``, creates the folder if needed and probes that it can be written; raises ``RunError`` before
    touching anything in it. Returns the saved config of the run being resumed (``None`` for a fresh run).

    A resumed run must have the same config except in the ``resumable`` fields, and ``steps_field`` (the step
    count) may not be smaller than the run's: a shorter run would relabel the longer run's parameters and
    metrics. ``normalize(saved)`` reads the saved config as the current code does (e.g. fields added since it
    was written, at their defaults; ``config_from_json``), raising ``ValueError`` on a damaged one."""
    try:
        validate()
    except ValueError as e:
        raise RunError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise RunError(f"out folder {out} exists and is not a folder")
    existing = out.is_dir() and bool(_entries(out))
    writer = live_writer(out / LOCK_NAME) if existing else None
    if writer is not None:  # a clearer refusal than "not empty" (the lock itself is what keeps writers apart)
        raise RunError(f"{out} is in use by {_describe(writer)}: wait for it to finish or stop it")
    if existing and not resume:
        raise RunError(f"out folder {out} is not empty; pass --resume to continue that run or choose another folder")
    saved = None
    if existing and resume:
        if not (out / "config.json").is_file():
            raise RunError(f"cannot resume: {out} holds no config.json of a training run")
        saved = read_config(out)
        if normalize is not None:
            try:
                saved = normalize(saved)
            except ValueError as e:
                raise RunError(f"cannot resume: {out / 'config.json'}: {e}") from None
        differ = config_mismatch(saved, config, resumable)
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} in the run, {config.get(k)!r} now" for k in differ)
            raise RunError(f"cannot resume {out}: its checkpoint has a different config ({detail})")
        if steps_field is not None and config[steps_field] < saved.get(steps_field, 0):
            raise RunError(f"cannot resume {out} with {steps_field.replace('_', '-')} {config[steps_field]}: the run "
                           f"is for {saved[steps_field]}, and a shorter run would relabel its parameters and metrics "
                           f"(ask for {saved[steps_field]} or more)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise RunError(f"cannot write out folder {out}: {e.strerror or e}") from None
    return saved


def record_session(out: Path, saved: dict | None, config: dict, start: int, steps_field: str,
                   note: str | None = None) -> None:
    """Appends this writer's line to ``out/history.jsonl``: ``{"time", "pid", "action", "from_step", "steps"}``
    with ``action`` ``"start"`` (a fresh run), ``"resume"`` (the same step count) or ``"extend"`` (a larger one,
    also with ``"extended_from"``), and ``note`` (e.g. a checkpoint fallback). A larger step count is also
    announced with a one-line warning: the run's config and summary are then those of the longer run."""
    steps = config[steps_field]
    line = {"time": round(time.time(), 3), "pid": os.getpid(), "from_step": start, "steps": steps}
    if saved is None and start == 0:
        line["action"] = "start"
    elif saved is not None and saved.get(steps_field, steps) < steps:
        line["action"] = "extend"
        line["extended_from"] = saved[steps_field]
        warn(f"extending {out} from {saved[steps_field]} to {steps} {steps_field.replace('_', '-')} "
             f"(from its checkpoint at step {start}; recorded in {HISTORY})")
    else:
        line["action"] = "resume"
    if note:
        line["note"] = note
    with open(out / HISTORY, "a", encoding="utf-8") as f:
        f.write(dumps(line) + "\n")


def read_history(out: Path | str) -> list[dict]:
    """The writers' lines of ``out/history.jsonl`` (``record_session``), oldest first."""
    return _read_jsonl(Path(out) / HISTORY)[0]


def clean_leftovers(out: Path) -> None:
    """Removes what a killed writer of ``out`` left: temporary files of its atomic writes (orbax removes its own
    uncommitted checkpoints when the checkpoint manager opens). Call it holding the folder's lock."""
    remove_stray_temporaries(out)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Keeps orbax's log lines and the unraisable-exception reports of its aborted reads (a damaged file) off
    stderr, where the scripts promise one line: the outcome is reported by the caller instead."""
    logger = logging.getLogger("absl")
    level, hook = logger.level, sys.unraisablehook
    logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    except BaseException:
        gc.collect()  # an aborted read leaves coroutines whose clean-up reports errors when collected: collect now
        raise
    finally:
        logger.setLevel(level)
        sys.unraisablehook = hook


def checkpoints(out: Path, read_only: bool = False) -> ocp.CheckpointManager:
    """The folder's orbax checkpoint manager (the two newest kept, synchronous, atomic commits). A writer's
    (``read_only=False``) creates ``checkpoints/`` and removes a killed writer's uncommitted checkpoints; a
    reader's writes nothing, and ``RunError`` says so when the run has no ``checkpoints/``."""
    path = (Path(out) / "checkpoints").absolute()
    if read_only and not path.is_dir():
        raise RunError(f"{out} holds no checkpoint yet (no checkpoints/): train it first")
    alone = {}
    if jax.process_count() > 1:  # a multi-process run: each process's manager acts alone (process 0 writes
        # host copies of the state, lab.meta.run; the others only read), so none waits in orbax's barriers
        me = jax.process_index()
        alone = {"multiprocessing_options": ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})}
        if not read_only:
            path.mkdir(parents=True, exist_ok=True)  # orbax creates no folder for a manager of a subset of processes
    with _quiet_orbax():  # a read-only manager's options log what they turn off
        options = ocp.CheckpointManagerOptions(max_to_keep=2, create=not read_only and not alone, read_only=read_only,
                                               cleanup_tmp_directories=not read_only,
                                               enable_async_checkpointing=False, **alone)
        return ocp.CheckpointManager(path, options=options)


def state_sha256(state: Any, config: dict) -> str:
    """SHA-256 of a checkpoint's contents: the config's canonical JSON, then every leaf of ``state`` in tree
    order with its dtype and shape (so a reinterpreted or reshaped leaf does not hash the same)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for leaf in jax.tree.leaves(state):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict) -> None:
    """Checkpoints ``state`` (any pytree) at ``step`` with the run's config and the checksum of both
    (``state_sha256``) beside it."""
    integrity = {"format": INTEGRITY_FORMAT, "sha256": state_sha256(state, config)}
    with _quiet_orbax():
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   config=ocp.args.JsonSave(config),
                                                   integrity=ocp.args.JsonSave(integrity)))


class _Damaged(Exception):
    """A checkpoint that cannot be read back as it was written."""


def _restore_step(manager: ocp.CheckpointManager, step: int, template: Any, config: dict, out: Path,
                  resumable: tuple[str, ...], normalize: Callable[[dict], dict] | None) -> Any:
    """Checkpoint ``step``'s state, verified against its checksum; ``_Damaged`` when it cannot be, ``RunError``
    when it is intact but was written with another config."""
    folder = Path(manager.directory) / str(step)
    missing = [item for item in ("state", "config") if not (folder / item).is_dir()]
    if missing:
        raise _Damaged(f"its {missing[0]}/ is missing")
    legacy = not (folder / "integrity").is_dir()  # written before checkpoints carried a checksum
    items = {"config": ocp.args.JsonRestore(), **({} if legacy else {"integrity": ocp.args.JsonRestore()})}
    try:
        with _quiet_orbax():
            meta = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many kinds on a damaged file; every one means "unreadable"
        raise _Damaged(f"unreadable ({type(e).__name__})") from None
    saved_config, integrity = meta["config"], None if legacy else meta["integrity"]
    if not isinstance(saved_config, dict) or not (legacy or isinstance(integrity, dict) and "sha256" in integrity):
        raise _Damaged("its config or checksum is unreadable")
    compare = saved_config
    if normalize is not None:
        try:
            compare = normalize(saved_config)
        except (ValueError, RunError):
            raise _Damaged("its config is not a valid config") from None
    differ = config_mismatch(compare, config, resumable)
    if differ:
        raise RunError(f"cannot resume {out}: checkpoint {step} has a different config ({', '.join(differ)})")
    try:
        with _quiet_orbax():
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
        state = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored["state"]))
    except Exception as e:
        raise _Damaged(f"unreadable ({type(e).__name__})") from None
    if legacy:
        warn(f"{out}: checkpoint {step} carries no checksum (written before checkpoints had one): not verified")
    elif state_sha256(state, saved_config) != integrity["sha256"]:
        raise _Damaged("its contents do not match their checksum")
    return state


def restore(manager: ocp.CheckpointManager, template: Any, config: dict, out: Path,
            resumable: tuple[str, ...], repair: bool = False,
            normalize: Callable[[dict], dict] | None = None) -> Any:
    """The newest intact checkpoint's state in the structure of ``template`` (``template`` itself when there is
    no checkpoint); ``RunError`` if it was written with another config, or if no checkpoint is intact.

    Each checkpoint is verified against its checksum (``save``). A damaged newest one falls back to the newest
    intact one with a one-line warning; a writer (``repair``) then deletes the damaged ones after it, whose
    steps it will write again. A reader deletes nothing."""
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return template
    problems = []
    for step in steps:
        try:
            state = _restore_step(manager, step, template, config, out, resumable, normalize)
        except _Damaged as e:
            problems.append((step, str(e)))
            continue
        if problems:
            damaged = ", ".join(f"checkpoint {s} ({why})" for s, why in problems)
            warn(f"{out}: {damaged} damaged; using checkpoint {step}")
            if repair:
                with _quiet_orbax():
                    for s, _ in problems:
                        manager.delete(s)
        return state
    damaged = "; ".join(f"checkpoint {s}: {why}" for s, why in problems)
    raise RunError(f"{out}: no intact checkpoint ({damaged})")


def _read_jsonl(path: Path) -> tuple[list[dict], int | None]:
    """The lines of a JSON-lines file and the 1-based number of its first damaged line (``None`` if none);
    lines after a damaged one are not read."""
    if not path.exists():
        return [], None
    lines = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return lines, number
            if not isinstance(line, dict):
                return lines, number
            lines.append(line)
    return lines, None


def trim_metrics(path: Path, last_step: int) -> None:
    """Drops metric lines written after the checkpoint a run resumes from (they will be written again), and a
    torn last line (a writer killed while writing it). A damaged line before the last is refused
    (``RunError``): cutting there would lose lines the checkpoint's steps already have."""
    if not path.exists():
        return
    lines, bad = _read_jsonl(path)
    if bad is not None:
        total = sum(1 for raw in path.read_bytes().splitlines() if raw.strip())
        if bad < total:
            raise RunError(f"{path} line {bad} is damaged (and not the last line, which a killed writer tears)")
    kept = [line for line in lines if isinstance(line.get("step"), int) and line["step"] <= last_step]
    if bad is not None or len(kept) != len(lines):
        write_text_atomic(path, "".join(dumps(line) + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict]:
    """Every metrics line of a run, in order (up to a torn last line, which a killed writer leaves)."""
    return _read_jsonl(Path(path))[0]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (write null)")


def read_config(out: Path | str) -> dict:
    """A run folder's ``config.json`` as a dict; ``RunError`` naming the file when there is none, or it is not
    strict JSON (``NaN`` and ``Infinity`` are refused) or not an object."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise RunError(f"{out} is not a run folder (it holds no config.json)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RunError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is unreadable ({e})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} holds a JSON {type(data).__name__}, not an object of config fields")
    return data


# --------------------------------------------------------------------------------------------------------
# Configs from JSON, field by field
# --------------------------------------------------------------------------------------------------------
def _check_value(value: Any, hint: Any, field: str) -> Any:
    """``value`` as the type ``hint`` says (ints as floats where a float is asked, lists as tuples), or
    ``ValueError`` naming ``field``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _check_value(value, option, field)
            except ValueError:
                pass
        raise ValueError(f"field {field!r} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else Any
            return tuple(_check_value(v, inner, f"{field}[{i}]") for i, v in enumerate(value))
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
    elif dataclasses.is_dataclass(hint):
        return config_from_json(hint, value, prefix=f"{field}.")
    else:
        return value  # a type this reader does not know: the config's own validation judges it
    raise ValueError(f"field {field!r} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def config_from_json(cls: type, data: Any, prefix: str = "", only: tuple[str, ...] | None = None):
    """An instance of the dataclass ``cls`` from JSON ``data``, field by field: ``ValueError`` naming the first
    unknown field or wrongly typed value; missing fields take their defaults (configs written before a field
    existed). ``only`` restricts the known fields; then the checked dict is returned instead of an instance."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'the config'} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init and (only is None or f.name in only)]
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ValueError(f"unknown field {prefix + unknown[0]!r}; known: {', '.join(fields)}")
    checked = {k: _check_value(v, hints[k], prefix + k) for k, v in data.items()}
    if only is not None:
        return checked
    try:
        return cls(**checked)
    except TypeError as e:  # a field without a default is missing
        raise ValueError(f"{prefix.rstrip('.') or 'the config'}: {e}") from None
