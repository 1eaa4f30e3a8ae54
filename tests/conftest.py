"""Test set-up: four fake CPU devices (for the sharding tests) before JAX initialises any backend."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the suite must not depend on an accelerator
# The default suite checks behaviour, not speed, and most of its time is XLA compiling programs that then run once
# on a few tasks. So it compiles them the quick way, in this process and in the scripts it starts (they inherit
# the environment); each program then runs slower, and its last bits differ from the default's, on which no test
# may depend. Both on 2 cores, every test passing:
# - XLA's backend optimisation level 0 (LLVM's): the whole suite 0.79x the time (459 s -> 362 s);
# - XLA:CPU's older fusion emitters instead of the MLIR ones jax 0.10 uses by default: they compile in about half
#   the time; the whole suite a further 0.79x (322 s -> 255 s). Set only for the jaxlib versions known to have
#   the flag: XLA aborts the process on a flag it does not know.
# The slow tests are the other way round (full trainings: mostly running), so a selection of them (-m slow)
# compiles as users' commands do. A flag named in the caller's own XLA_FLAGS is kept either way:
# XLA_FLAGS="--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true" runs the default suite as
# users' commands compile. (Set in pytest_configure, after the options are read and before any computation
# starts XLA's backend or pytest-xdist starts the workers that inherit it.)
def _quick_compile_flags(caller: str) -> str:
    """``caller`` (the XLA_FLAGS this process was given) with the suite's quick-compile flags it does not name."""
    from importlib import metadata

    try:
        jaxlib = tuple(int(part) for part in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        jaxlib = None
    flags = {"xla_backend_optimization_level": "0"}
    if jaxlib == (0, 10):
        flags["xla_cpu_use_fusion_emitters"] = "false"
    added = [f"--{name}={value}" for name, value in flags.items() if name not in caller]
    return " ".join([caller, *added]).strip()


def pytest_configure(config):
    """The quick-compile flags (``_quick_compile_flags``) unless the mark expression selects slow tests."""
    if "slow" not in (config.getoption("markexpr") or "").replace("not slow", ""):
        os.environ["XLA_FLAGS"] = _quick_compile_flags(os.environ.get("XLA_FLAGS", ""))


# One persistent compilation cache for the session, as a user's commands share theirs: scripts run in child
# processes (as a user runs them) and this process both use it. A worker drops its compiled programs once it
# holds many (``_release_compiled_programs``), and a later module that needs one of them loads it from disk
# instead of compiling it again; pytest-xdist workers load what the other compiled. Under pytest-xdist the controller
# makes the folder before it starts its workers, and they inherit it; the controller removes it at its exit.
if "PYTEST_XDIST_WORKER" not in os.environ or "MESA_LAB_COMPILE_CACHE" not in os.environ:
    os.environ["MESA_LAB_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="mesa-lab-test-compile-cache-")
    atexit.register(shutil.rmtree, os.environ["MESA_LAB_COMPILE_CACHE"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

from lab import compile_cache  # noqa: E402

# (It was kept off here for a while after one crash inside XLA's executable serialisation, jax 0.10.2 on CPU,
# writing an executable of this suite; the two full suites run with it on since have not crashed.)
compile_cache.enable(os.environ["MESA_LAB_COMPILE_CACHE"])
# A test that calls a script's main() in this process keeps the session's folder: no test writes to the user's.
compile_cache.enable = lambda setting=None: None
jax.config.update("jax_numpy_rank_promotion", "raise")  # catch silent broadcasting

import pytest  # noqa: E402

import scripts_loader as scripts  # noqa: E402  (tests/scripts_loader.py)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one pytest-xdist worker per core this process may run on, at most 4.
    xdist would count every core of the machine (psutil), also those a container or CI runner does not grant;
    each worker is a JAX process of its own, so more workers than cores only slow the suite down."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``first`` (the longest, about ten seconds each) run before the others: the workers then end
    the suite on short tests, together, instead of one of them running a long test alone while the others wait.
    pytest-xdist hands out tests in this order (each worker sorts its identical collection the same way)."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)  # stable: otherwise collection order


@pytest.fixture
def key():
    return jax.random.key(0)


def _memory_maps() -> int | None:
    """How many memory mappings this process holds (Linux's /proc), or ``None`` where that cannot be read."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def _max_map_count() -> int:
    """The kernel's cap on a process's memory mappings (Linux's default where it cannot be read)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


# Compiled programs are kept across modules until the process holds a quarter of its cap on mappings (one
# module of this suite adds at most about 6,000): a module that needs a program an earlier one compiled then
# neither traces nor loads it again, as it did when every module released them.
_MAPS_KEPT = _max_map_count() // 4


def release_compiled_programs() -> None:
    """Drops the lab's cached factories (``functools.lru_cache``) and JAX's caches: this process then holds no
    compiled program, and the next use of one traces it again (and loads it from the session's disk cache)."""
    import functools
    import gc
    import sys

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("lab", "probes") and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, functools._lru_cache_wrapper):
                    value.cache_clear()
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After a test module that leaves the process holding many memory mappings (``_MAPS_KEPT``; where they
    cannot be counted, after every module), ``release_compiled_programs``. Within a process the lab keeps every
    compiled program it may reuse (``functools.lru_cache`` factories); over a whole suite of distinct families
    and optimizers those would pile up until XLA:CPU cannot map more code (each executable holds several memory
    mappings, and the kernel caps a process at ``vm.max_map_count``) and aborts mid-compile."""
    yield
    maps = _memory_maps()
    if maps is None or maps >= _MAPS_KEPT:
        release_compiled_programs()
    # else room is left: the next modules reuse what this one compiled, without tracing or loading it again


@pytest.fixture
def fresh_programs():
    """A test that counts the programs it compiles starts from none (what earlier modules compiled is kept)."""
    release_compiled_programs()


@pytest.fixture
def script_error(capsys):
    """``script_error(name, *args)``: runs ``scripts/<name>.py``'s ``main(args)`` in this process, as the command
    line would (argparse's exit included), and returns ``(exit code, stderr)``. In-process because a refused
    command does no work: a child process would spend its seconds importing jax."""

    def call(name: str, *args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = scripts.load(name).main(list(args))
        except SystemExit as e:  # argparse's own errors
            code = e.code
        return code, capsys.readouterr().err

    return call
