"""Small file helpers shared by run folders, reports and benchmarks: every file is written whole or not at all,
and every JSON file is strict JSON (a non-finite number is written as ``null``, which other tools can read).

- ``write_text_atomic`` / ``write_json_atomic``: one file, through a temporary file and a rename.
- ``write_folder_atomic``: a folder whose files belong together (a report): written beside it and swapped in, so
  its files appear together or not at all; ``clean_folder_leftovers`` removes what a killed writer left.
- ``commit_files``: several files into a folder that holds other things too (a zoo's ``zoo.json`` and
  ``report.html`` beside its ``runs/``), staged and committed with a marker; ``recover_commits`` finishes or
  drops what a killed writer left.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lab.cli import Parser as OneLineParser  # noqa: F401  (the scripts' parser lives in lab.cli; old name kept)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename, so readers never
    see half a file and a failure leaves the old file as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file owner-only; configs and reports are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(data):
    """``data`` with every non-finite float replaced by ``None`` (recursively through dicts, lists and tuples),
    so that ``json.dumps(..., allow_nan=False)`` accepts it: strict JSON has no NaN or Infinity."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: strict(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict(v) for v in data]
    return data


def dumps(data, **kw) -> str:
    """Strict JSON text of ``data`` (non-finite floats as ``null``; ``json.dumps`` keywords pass through)."""
    return json.dumps(strict(data), allow_nan=False, **kw)


def write_json_atomic(path: Path | str, data) -> None:
    """``data`` as indented strict JSON (``dumps``), written atomically (``write_text_atomic``)."""
    write_text_atomic(path, dumps(data, indent=2, sort_keys=True) + "\n")


def remove_stray_temporaries(folder: Path | str) -> list[Path]:
    """Removes the temporary files ``write_text_atomic`` leaves when its writer is killed before the rename
    (``.NAME.XXXX.tmp`` in ``folder``); returns them. Call it only while holding the folder's lock, so no live
    writer's temporary is taken."""
    folder = Path(folder)
    stray = [p for p in folder.glob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


# --------------------------------------------------------------------------------------------------------
# A folder written as a unit
# --------------------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2  # renameat2 flag (Linux 3.15+): swap two paths in one atomic step
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swaps ``a`` and ``b`` atomically where the system can (Linux ``renameat2``); ``False`` where it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _staging(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.partial-{os.getpid()}"


def _absolute(folder: Path | str) -> Path:
    """``folder`` as an absolute path without ``..`` or a trailing ``.``, so it has a name and a parent."""
    return Path(os.path.abspath(folder))


def clean_folder_leftovers(folder: Path | str) -> list[Path]:
    """Removes what a killed ``write_folder_atomic`` left beside ``folder`` (a half-written ``.NAME.partial-*``,
    or the previous version ``.NAME.old-*`` that is put back if ``folder`` itself is missing); returns what it
    removed. Call it only while holding the folder's lock."""
    folder = _absolute(folder)
    if not folder.parent.is_dir():
        return []
    removed = []
    for old in sorted(folder.parent.glob(f".{folder.name}.old-*")):
        if not folder.exists():
            os.rename(old, folder)  # killed between its two renames: the previous report is whole, restore it
        else:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    for partial in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    return removed


def unit_folder_problem(folder: Path | str, names) -> str | None:
    """Why ``write_folder_atomic`` could not replace ``folder`` with files of ``names``, or ``None``: it must be
    missing, or a folder holding nothing but files of those names (an earlier version) and a killed writer's
    temporaries. Scripts ask before their work, so a long audit does not end in this refusal."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{folder} exists and is not a folder"
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in names and not p.name.endswith(".tmp"))
    if foreign:
        return (f"{folder} holds {foreign[0]!r}, which is not part of this report; give an empty or new folder, "
                f"or one holding only an earlier {' and '.join(sorted(names))}")
    return None


def write_folder_atomic(folder: Path | str, files: Mapping[str, str | bytes], exchange: bool = True) -> None:
    """Writes ``files`` (name → text or bytes) as the whole content of ``folder``: into a temporary folder
    beside it, then swapped in (one atomic exchange where the system has one, else two renames, with the old
    version kept aside in between), so a reader sees the old files or the new ones, never a mix. ``folder``
    must hold nothing but files of the same names (a previous version); ``ValueError`` otherwise, before
    anything is written. ``exchange=False`` forces the two-rename path (for tests)."""
    folder = _absolute(folder)
    problem = unit_folder_problem(folder, files)
    if problem:
        raise ValueError(problem)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = _staging(folder)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        _write_synced(stage, files)  # on disk before the swap makes it the report
        if not folder.exists():
            os.rename(stage, folder)
        elif exchange and _exchange(stage, folder):
            shutil.rmtree(stage)  # it now holds the previous version
        else:
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
            os.rename(stage, folder)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _write_synced(folder: Path, files: Mapping[str, str | bytes]) -> None:
    """Writes ``files`` (name → text or bytes) into ``folder``, each flushed to disk."""
    for name, content in files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(folder / name, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------------
# Several files committed into a shared folder
# --------------------------------------------------------------------------------------------------------
_COMMITTED = "COMMITTED"


def recover_commits(folder: Path | str) -> None:
    """Finishes or drops the commits a killed ``commit_files`` left in ``folder``: a staging folder with its
    commit marker is moved into place (its files were complete), one without it is deleted. Call it while
    holding the folder's lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for stage in sorted(folder.glob(".commit-*")):
        if not stage.is_dir():
            continue
        if (stage / _COMMITTED).is_file():
            for name in (stage / _COMMITTED).read_text().split("\n"):
                if name and (stage / name).exists():
                    os.replace(stage / name, folder / name)
        shutil.rmtree(stage, ignore_errors=True)


def commit_files(folder: Path | str, files: Mapping[str, str | bytes]) -> None:
    """Writes ``files`` (name → text or bytes) into ``folder``, which may hold other things, as one commit:
    every file is staged in ``folder/.commit-PID/``, then a marker naming them is written (the commit point),
    then they are moved into place. A writer killed before the marker leaves the old files as they were; one
    killed after it leaves a commit that ``recover_commits`` (run by the next writer) completes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover_commits(folder)
    stage = folder / f".commit-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        _write_synced(stage, files)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    write_text_atomic(stage / _COMMITTED, "\n".join(files) + "\n")  # the commit point
    recover_commits(folder)
