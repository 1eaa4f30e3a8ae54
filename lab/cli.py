"""What every script shares on its command line: the parser (one-line errors, exit code 2, defaults in the help)
and the validated argument types, so a bad value is refused with one line before anything is computed or written.

- ``Parser``: ``argparse`` whose errors are one line on stderr with exit code 2 (no usage block), whose help
  shows every flag's default, which accepts negative numbers as values (``--loss-floor -1e3``), and whose
  ``epilog`` may be a function (called only for ``--help``, so listing registries costs nothing otherwise);
  it adds ``--compile-cache DIR|off`` and turns jax's persistent compilation cache on as it parses
  (``lab.compile_cache``).
- Types: ``integer(lo, hi)`` (and ``positive``, ``seed``), ``real(lo, hi, ...)`` (finite unless asked),
  ``names(known)`` for comma-separated lists.
- Checks of paths before any work: ``writable_folder`` (an output folder, probed with a temporary file in it or
  in its nearest existing parent), ``writable_file`` (an output file), ``run_folder`` (an input run folder).
- ``check_memory(bytes, what)``: a size estimate against the memory available, with the estimate in the message.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from lab import compile_cache as _compile_cache

SEED_MAX = 2 ** 63 - 1  # jax.random.key takes a signed 64-bit seed; beyond it, it overflows mid-run


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option's help (unless the help already says what the default is, the option
    is required, or it is a switch that takes no value: its default is its absence, and "--no-incontext (default:
    True)" would read as the opposite); the description and epilog keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.nargs == 0 or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse for the scripts: an error is one line on stderr (no usage block) and exit code 2; ``--help``
    shows every default; a negative number (``-1e3``, ``-inf``) is a value, not an unknown flag."""

    def __init__(self, *args, epilog: str | Callable[[], str] | None = None, compile_cache: bool = True, **kw):
        kw.setdefault("formatter_class", _Formatter)
        self._epilog_fn = epilog if callable(epilog) else None
        super().__init__(*args, epilog=None if callable(epilog) else epilog, **kw)
        # Every script keeps jax's compiled programs on disk (lab.compile_cache), except where it would falsify a
        # measurement (bench.py times compilation, so it passes compile_cache=False).
        self._compile_cache = compile_cache
        if compile_cache:
            _compile_cache.add_flag(self)
        # argparse's own pattern misses exponents and inf, so "--loss-floor -1e3" read as a missing value.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$",
                                                   re.IGNORECASE)

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if self._compile_cache:
            _compile_cache.enable(namespace.compile_cache)
        return namespace, rest

    def format_help(self) -> str:
        if self._epilog_fn is not None and self.epilog is None:
            self.epilog = self._epilog_fn()
        return super().format_help()

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [``lo``, ``hi``] (either bound may be open with ``None``)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if lo is not None and value < lo or hi is not None and value > hi:
            if lo == 1:
                bound = f" and at most {hi}" if hi is not None else ""
                raise argparse.ArgumentTypeError(f"must be positive{bound}, got {value}")
            raise argparse.ArgumentTypeError(f"{value} is out of range: {_range(lo, hi)}")
        return value

    parse.__name__ = "integer"
    return parse


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"give an integer from {lo} to {hi}"
    return f"give an integer ≥ {lo}" if lo is not None else f"give an integer ≤ {hi}"


def positive(hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from 1 to ``hi``."""
    return integer(1, hi)


def distinct_positives(hi: int, what: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated distinct integers from 1 to ``hi``, sorted; ``what`` names them in
    errors and help (``"pool sizes"``)."""
    one = positive(hi)

    def parse(text: str) -> list[int]:
        values = [one(t.strip()) for t in text.split(",") if t.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} names no {what.removesuffix('s')}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{what} must be distinct, got {text!r}")
        return sorted(values)

    parse.__name__ = what
    return parse


seed = integer(0, SEED_MAX)
seed.__doc__ = "An argparse type: a PRNG seed, an integer from 0 to 2**63 - 1 (what ``jax.random.key`` takes)."


def real(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
         finite: bool = True) -> Callable[[str], float]:
    """An argparse type: a float, finite unless ``finite=False``, within the bounds given (open with
    ``lo_open``/``hi_open``). ``nan`` is never accepted."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if math.isnan(value) or (finite and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            parts = ([f"{'>' if lo_open else '≥'} {lo:g}"] if lo is not None else []) + \
                    ([f"{'<' if hi_open else '≤'} {hi:g}"] if hi is not None else [])
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give a number {' and '.join(parts)}")
        return value

    parse.__name__ = "number"
    return parse


def names(known: Iterable[str] | Callable[[], Iterable[str]], what: str, allow_empty: bool = False
          ) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of ``known`` (or of ``known()``, called when
    the argument is parsed, for registries that are slow to import); an empty list is refused unless
    ``allow_empty``."""

    def parse(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        if not chosen and not allow_empty:
            raise argparse.ArgumentTypeError(f"{text!r} names no {what}")
        options = list(known() if callable(known) else known)
        for name in chosen:
            if name not in options:
                raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; known: {', '.join(options)}")
        return chosen

    parse.__name__ = "names"
    return parse


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path) -> None:
    """Creates and removes a temporary file in ``folder``: the only sure test that it can be written."""
    with tempfile.TemporaryFile(dir=folder, prefix=".write-probe-"):
        pass


def writable_folder(path: Path | str) -> str | None:
    """Why ``path`` cannot serve as an output folder, or ``None`` if it can: it is a folder (or can be created
    in its nearest existing parent) and a file can be written there. Creates nothing that stays."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"{path} cannot be created: {existing} is not a folder"
    try:
        _probe(existing)
    except OSError as e:
        return f"{path} cannot be written ({e.strerror or e} in {existing})"
    return None


def writable_file(path: Path | str) -> str | None:
    """Why ``path`` cannot be written as an output file, or ``None`` if it can (its folder exists and can be
    written; ``path`` is not a folder)."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    parent = path.absolute().parent
    if not parent.is_dir():
        return f"{path}: folder {parent} does not exist"
    try:
        _probe(parent)
    except OSError as e:
        return f"{path} cannot be written ({e.strerror or e})"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} cannot be written (permission denied)"
    return None


def run_folder(path: Path | str) -> str | None:
    """Why ``path`` is not a run folder one can audit or load, or ``None``: it must hold ``config.json`` and a
    ``checkpoints/`` folder with at least one checkpoint (an untrained run has nothing to audit)."""
    path = Path(path)
    if not path.is_dir():
        return f"{path} is not a folder"
    if not (path / "config.json").is_file():
        return f"{path} is not a run folder (it holds no config.json)"
    ckpt = path / "checkpoints"
    if not ckpt.is_dir() or not any(p.name.isdigit() and p.is_dir() for p in ckpt.iterdir()):
        return f"{path} holds no checkpoint yet (no checkpoints/<step>/): train it first"
    return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: on an accelerator its free memory, on the CPU the
    kernel's MemAvailable; ``None`` where neither can be read."""
    try:
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # no backend or no statistics: fall back to the host's memory
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(estimate: float, what: str, available: int | None = None) -> str | None:
    """Why a computation whose working set is about ``estimate`` bytes cannot run here, or ``None``: the
    estimate exceeds the available memory (``available_memory()``). The message gives both figures."""
    available = available_memory() if available is None else available
    if available is None or estimate <= available:
        return None
    return f"{what} needs about {_bytes(estimate)} of memory, more than the {_bytes(available)} available"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PB"
