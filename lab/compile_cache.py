"""jax's persistent compilation cache, on by default in every script.

Almost all of a short command's time is XLA compiling the same programs again (an audit is 98% compilation,
``scripts/bench.py``); with the cache a second process loads them from disk. The folder is the user's cache
folder (``platformdirs.user_cache_dir("mesa-lab")/jax``, e.g. ``~/.cache/mesa-lab/jax`` on Linux); the
environment variable ``MESA_LAB_COMPILE_CACHE`` or each script's ``--compile-cache`` flag moves it, and the
value ``off`` turns it off. Deleting the folder clears it; jax keys every entry by the program, the jax
version and the device, so a stale entry is never used for another program.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import platformdirs

ENV = "MESA_LAB_COMPILE_CACHE"
OFF = "off"


def default_folder() -> Path:
    """Where the cache lives unless told otherwise: the user's cache folder for this project."""
    return Path(platformdirs.user_cache_dir("mesa-lab")) / "jax"


def resolve(setting: str | None = None) -> Path | None:
    """The folder a setting names (``None``: the environment variable, else the default), or ``None`` for
    ``off``."""
    setting = setting if setting is not None else os.environ.get(ENV, "")
    if setting.strip().lower() == OFF:
        return None
    return Path(setting).expanduser() if setting.strip() else default_folder()


def enable(setting: str | None = None) -> Path | None:
    """Turns jax's persistent compilation cache on in ``resolve(setting)`` and returns the folder (``None``
    if off). Every compiled program is kept, however fast it compiled: the many small programs of an audit
    add up. A folder that cannot be created leaves the cache off rather than failing the command."""
    folder = resolve(setting)
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            folder = None
    # Worker processes (the zoo's) inherit the choice through the environment and call enable() themselves.
    os.environ[ENV] = str(folder) if folder is not None else OFF
    if folder is None:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def inherit() -> Path | None:
    """In a worker process: the parent's choice (set in the environment by its ``enable``), or nothing if the
    parent made none (a library caller who never asked for the cache does not get one in its workers)."""
    return enable() if ENV in os.environ else None


def add_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--compile-cache DIR|off`` flag every script takes (``lab.cli.Parser`` adds it and calls
    ``enable(args.compile_cache)``)."""
    parser.add_argument("--compile-cache", metavar="DIR|off", default=None,
                        help=f"folder of jax's persistent compilation cache, or 'off' (default: ${ENV} if set, "
                             f"else {default_folder()})")
