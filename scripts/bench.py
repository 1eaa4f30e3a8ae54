"""Benchmark the lab's hot paths side by side in one process, and what the machine could do.

    python scripts/bench.py --out bench.json

Every comparison is a ratio of two things timed interleaved A, B, A, B after warm-up (shared machines are
noisy; the load average at start and end is recorded). Measured:

1. ``peak``: the machine's fp32 matmul rate (a 2048² matmul), the yardstick of every "% of peak".
2. ``inner_step``: one step of the MLP and LSTM learned optimizers over ``optax.adam`` on an ``mlp`` family
   task of 212 and of about 70k parameters, per call and inside a scan.
3. ``meta_step``: the library's meta-step (``lab.meta.train.make_meta_step``) against the hand-written one of
   the same math (``lab.meta.reference``), checked equal in meta-loss, at the default config, at 256 tasks and
   at dimension 32; compile and steady-state times apart.
4. ``flops``: the meta-step's floating-point work counted with every loop trip (``lab.flops.count``), checked
   against XLA's own count of the same program with its scans written out, beside XLA's plain figure (which
   counts a loop body once); achieved GFLOP/s and % of peak for the default config and the ``mlp`` family at
   256 tasks.
5. ``remat``: memory (XLA's buffer assignment) and time of rematerialised against plain backprop.
6. ``host_sync``: fetching the metrics every meta-step against once per block (``lab.meta.run``).
7. ``scaling``: meta-steps per second over tasks 8…512, truncation 5…40, dimension 8…128, and devices 1…4
   (CPU devices in subprocesses, the task axis sharded as ``lab.meta.train.distribute`` does).
8. ``digits``: meta-steps per second of the default ``digits_mlp`` training (``train.py --family digits_mlp
   --estimator pes``: real images, a 2,410-parameter network per task) at 32 and 256 tasks.

Prints a table; writes JSON to --out (to stdout after the table without --out). ``--quick`` is a small
configuration for the tests. It runs unchanged on a GPU. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab import cli
from lab.io import write_json_atomic


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int             # interleaved A/B rounds per inner-step comparison (per-call timing)
    warmup: int             # untimed calls of each before timing
    scan_steps: int         # updates per call in the in-scan comparison
    scan_rounds: int        # interleaved rounds of the in-scan comparison
    meta_rounds: int        # interleaved rounds of each meta-step comparison
    peak_size: int          # side of the square matmul that measures the peak
    meta_cases: tuple       # (name, MetaConfig overrides, quadratic dimension) of the library/reference rows
    inner_sizes: tuple      # mlp family options of the inner-step rows
    scaling: dict           # axis -> values of the scaling rows
    flops_unrolled: dict    # MetaConfig overrides of the case XLA counts with its scans written out
    flops_rows: tuple       # (name, MetaConfig overrides) of the % of peak rows
    remat_cases: tuple      # MetaConfig overrides of the remat rows
    digits_tasks: tuple     # task counts of the digits_mlp rows
    digits_overrides: dict  # MetaConfig fields of the digits_mlp rows beyond its default PES training
    quick: bool = False


SMALL_MLP, LARGE_MLP = {}, {"in_dim": 64, "hidden": 1024}  # 212 and 70,660 parameters
DEFAULT = Settings(
    rounds=2000, warmup=50, scan_steps=100, scan_rounds=200, meta_rounds=40, peak_size=2048,
    meta_cases=(("default", {}, 8), ("tasks 256", {"tasks": 256}, 8), ("dimension 32", {"tasks": 256}, 32)),
    inner_sizes=(SMALL_MLP, LARGE_MLP),
    scaling={"tasks": (8, 32, 128, 512), "truncation": (5, 10, 20, 40), "dimension": (8, 32, 128),
             "devices": (1, 2, 4)},
    flops_unrolled={}, flops_rows=(("default", {}), ("mlp", {"family": "mlp", "tasks": 256})),
    remat_cases=({}, {"family": "mlp", "tasks": 256}), digits_tasks=(32, 256), digits_overrides={})
QUICK = Settings(
    rounds=100, warmup=5, scan_steps=10, scan_rounds=10, meta_rounds=4, peak_size=256,
    meta_cases=(("default", {"tasks": 8, "truncation": 5}, 8),), inner_sizes=(SMALL_MLP,),
    scaling={"tasks": (4,), "devices": (2,)}, flops_unrolled={"tasks": 8, "truncation": 5},
    flops_rows=(("default", {"tasks": 8, "truncation": 5}),), remat_cases=({"tasks": 8, "truncation": 5},),
    digits_tasks=(4,), digits_overrides={"truncation": 2}, quick=True)


def parse(argv=None) -> tuple[Settings, Path | None]:
    # No persistent compilation cache here: the benchmark times compilation.
    p = cli.Parser(prog="bench.py", description=__doc__.split("\n\n")[0], compile_cache=False)
    p.add_argument("--out", type=Path, help="write the JSON here (default: print it after the table)")
    p.add_argument("--quick", action="store_true", help="small fast configuration (used by the tests)")
    p.add_argument("--rounds", type=cli.positive(), help=f"interleaved inner-step rounds (default {DEFAULT.rounds}, "
                                                          f"quick {QUICK.rounds})")
    p.add_argument("--meta-rounds", type=cli.positive(),
                   help=f"interleaved meta-step rounds per comparison (default {DEFAULT.meta_rounds}, "
                        f"quick {QUICK.meta_rounds})")
    args = p.parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds, scan_rounds=max(1, args.rounds // 10))
    if args.meta_rounds is not None:
        settings = dataclasses.replace(settings, meta_rounds=args.meta_rounds)
    if args.out is not None and (problem := cli.writable_file(args.out)):
        p.error(f"--out {problem}")
    return settings, args.out


# --- measurements (jax is imported only after the arguments are accepted) --------------------------------

def machine() -> dict:
    import jax
    import jaxlib

    devices = jax.devices()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "platform": jax.default_backend(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "os": platform.platform(),
        "env": {k: os.environ[k] for k in ("JAX_PLATFORMS", "XLA_FLAGS") if k in os.environ},
        "loadavg_1m_at_start": _loadavg(),  # other processes on a shared machine skew every timing
    }


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def interleave(a, args_a, b, args_b, warmup: int, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per call of ``a(*args_a)`` and ``b(*args_b)``, called alternately A, B, A, B ... after
    ``warmup`` untimed calls of each; every call is waited for with ``jax.block_until_ready``."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(a(*args_a))
        jax.block_until_ready(b(*args_b))
    ta, tb = [], []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            jax.block_until_ready(a(*args_a))
            t1 = time.perf_counter()
            jax.block_until_ready(b(*args_b))
            t2 = time.perf_counter()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    finally:
        if enabled:
            gc.enable()
    return ta, tb


def _in_scan(update, steps: int):
    """``steps`` updates inside one jitted ``lax.scan`` (state carried, each update applied to θ, the
    observation fixed): the per-step cost without per-call dispatch, as inside meta-training."""
    import jax
    import jax.numpy as jnp

    def run(obs, state, params):
        def body(carry, _):
            s, p = carry
            u, s, _ = update(obs, s, p)
            return (s, jax.tree.map(jnp.add, p, u)), None

        (state, params), _ = jax.lax.scan(body, (state, params), None, length=steps)
        return params, state

    return jax.jit(run)


def bench_inner_step(settings: Settings, family_options: dict) -> dict:
    import jax
    import optax

    from lab import families
    from lab.optimizers.handwritten import from_optax
    from lab.optimizers.learned import LearnedOptimizer

    family = families.make("mlp", **family_options)
    k_task, k_init, k_obs, k_meta = jax.random.split(jax.random.key(0), 4)

    @jax.jit  # one compile instead of many eager op-by-op ones
    def setup(k_task, k_init, k_obs):
        task = family.sample(k_task)
        params = family.init(k_init, task)
        return params, family.observe(params, task, k_obs)

    params, obs = setup(k_task, k_init, k_obs)
    adam = from_optax(optax.adam(1e-3))
    adam_state = adam.init(params)
    result = {"family": "mlp", "family_options": family_options, "n_params": int(sum(v.size for v in jax.tree.leaves(params))),
              "adam": "lab.optimizers.handwritten.from_optax(optax.adam(1e-3))"}
    adam_args = (obs, adam_state, params)
    adam_step, adam_scan = jax.jit(adam.update), _in_scan(adam.update, settings.scan_steps)
    for kind in ("mlp", "lstm"):
        lopt = LearnedOptimizer(kind=kind)
        opt = lopt.optimizer(lopt.init_meta(k_meta))
        lopt_args = (obs, opt.init(params), params)
        t_l, t_a = interleave(jax.jit(opt.update), lopt_args, adam_step, adam_args, settings.warmup,
                              settings.rounds)
        s_l, s_a = interleave(_in_scan(opt.update, settings.scan_steps), lopt_args, adam_scan, adam_args,
                              max(1, settings.warmup // 10), settings.scan_rounds)
        med = lambda ts, per=1: statistics.median(ts) / per * 1e6  # noqa: E731
        result[kind] = {
            "lopt_us": med(t_l), "adam_us": med(t_a), "ratio": med(t_l) / med(t_a), "rounds": settings.rounds,
            "in_scan": {"lopt_us": med(s_l, settings.scan_steps), "adam_us": med(s_a, settings.scan_steps),
                        "ratio": med(s_l) / med(s_a), "steps_per_call": settings.scan_steps,
                        "rounds": settings.scan_rounds},
        }
    return result


def _median_ms(ts) -> float:
    return statistics.median(ts) * 1e3


def bench_peak(settings: Settings) -> dict:
    """The fp32 matmul rate of the first device: a ``peak_size``² matmul, median and best of 20 calls."""
    import jax
    import jax.numpy as jnp

    n = settings.peak_size
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    ts, _ = interleave(matmul, (a,), lambda: None, (), 3, 20)
    flop = 2.0 * n**3
    return {"matmul": n, "gflops_per_s": flop / statistics.median(ts) / 1e9, "best_gflops_per_s": flop / min(ts) / 1e9}


_CASES: dict = {}


def _meta_case(overrides: dict, dimension: int = 8):
    """(config, family, initial state, meta-step, its compiled jit) of the default config with ``overrides``,
    the quadratic at ``dimension``; made and compiled once per case in the run (``_compile_seconds`` keeps the
    compile time)."""
    key = _case_key(overrides, dimension)
    if key not in _CASES:
        config, family, state, step, jitted = _new_case(overrides, dimension)
        compiled, seconds = _compile(jitted, state)
        _CASES[key] = (config, family, state, step, compiled)
        _COMPILE_SECONDS[key] = seconds
    return _CASES[key]


_COMPILE_SECONDS: dict = {}


def _compile_seconds(overrides: dict, dimension: int = 8) -> float:
    return _COMPILE_SECONDS[_case_key(overrides, dimension)]


def _case_key(overrides: dict, dimension: int) -> tuple:
    """A case's identity: the fields that differ from the default config, and the dimension."""
    from lab.meta.train import MetaConfig

    defaults = MetaConfig()
    return tuple(sorted((k, v) for k, v in overrides.items() if getattr(defaults, k) != v)), dimension


def _new_case(overrides: dict, dimension: int):
    import jax

    from lab import families
    from lab.meta.train import MetaConfig, init_state, make_meta_step

    config = dataclasses.replace(MetaConfig(), **overrides)
    family = families.make(config.family, dim=dimension) if config.family == "quadratic" else config.family_obj()
    step = make_meta_step(config, family)
    return config, family, init_state(config, family), step, jax.jit(step)


def _compile(jitted, *args) -> tuple[object, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def bench_against_reference(settings: Settings) -> list[dict]:
    """Library against reference meta-step, per case: equal meta-loss over a few steps, then timed."""
    import jax
    import numpy as np

    from lab.meta import reference

    rows = []
    for name, overrides, dimension in settings.meta_cases:
        config, family, state, _, lib_c = _meta_case(overrides, dimension)
        lib_compile = _compile_seconds(overrides, dimension)
        ref = jax.jit(reference.make_reference_meta_step(config.tasks, config.truncation, family.horizon,
                                                         dimension))
        args = reference.from_library_state(state)
        ref_c, ref_compile = _compile(ref, *args)
        s, a, lib_losses, ref_losses = state, args, [], []
        for _ in range(5):  # the same math: the same meta-losses, step after step
            s, metrics = lib_c(s)
            *a, loss = ref_c(*a)
            lib_losses.append(float(metrics["meta_loss"]))
            ref_losses.append(float(loss))
        rel = float(np.max(np.abs(np.subtract(lib_losses, ref_losses)) / np.maximum(np.abs(ref_losses), 1e-12)))
        t_lib, t_ref = interleave(lib_c, (s,), ref_c, tuple(a), 2, settings.meta_rounds)
        rows.append({
            "case": name, "tasks": config.tasks, "truncation": config.truncation, "dimension": dimension,
            "library_ms": _median_ms(t_lib), "reference_ms": _median_ms(t_ref),
            "ratio": statistics.median(t_lib) / statistics.median(t_ref),
            "library_compile_s": lib_compile, "reference_compile_s": ref_compile,
            "meta_loss_max_relative_difference": rel, "rounds": settings.meta_rounds,
        })
    return rows


def bench_flops(settings: Settings, peak: dict) -> dict:
    """Counted flops with loop trips, checked against XLA's count of the unrolled program; % of peak."""

    from lab import flops

    config, family, state, step, library = _meta_case(settings.flops_unrolled)
    counted = flops.count(step, state)
    plain = flops.xla_flops(library)
    unrolled = flops.xla_unrolled(step, state)
    check = {"config": config.to_json(), "counted": counted.flops, "xla_unrolled": unrolled, "xla_plain": plain,
             "counted_over_xla_unrolled": None if not unrolled else counted.flops / unrolled,
             "transcendentals": counted.transcendentals, "loops_counted_once": counted.loops_once}
    rows = []
    for name, overrides in settings.flops_rows:
        config, family, state, step, compiled = _meta_case(overrides)
        count = flops.count(step, state)
        ts, _ = interleave(compiled, (state,), lambda: None, (), 2, settings.meta_rounds)
        gflops = count.flops / statistics.median(ts) / 1e9
        rows.append({"case": name, "family": config.family, "tasks": config.tasks, "truncation": config.truncation,
                     "flops_per_meta_step": count.flops, "ms_per_meta_step": _median_ms(ts),
                     "gflops_per_s": gflops, "percent_of_peak": 100 * gflops / peak["gflops_per_s"],
                     "xla_plain_flops": flops.xla_flops(compiled)})
    return {"check": check, "rows": rows, "note": (
        "counted: dot_general as 2*out*contracted, other arithmetic one per element, every scan body times its "
        "length (lab.flops); XLA's plain cost analysis counts a loop body once. XLA's count of the unrolled "
        "program is higher because it also counts the integer hash of the random draws and expands some "
        "functions (erf_inv of normal draws) into arithmetic")}


def bench_remat(settings: Settings) -> list[dict]:
    """Rematerialised against plain truncated backprop: XLA's temporary buffers and the steady-state time."""
    rows = []
    for overrides in settings.remat_cases:
        plain_cfg, family, state, _, plain_c = _meta_case({**overrides, "remat": False})
        *_, remat_c = _meta_case({**overrides, "remat": True})
        t_remat, t_plain = interleave(remat_c, (state,), plain_c, (state,), 2, settings.meta_rounds)
        mem = lambda c: c.memory_analysis().temp_size_in_bytes  # noqa: E731
        rows.append({"family": plain_cfg.family, "tasks": plain_cfg.tasks, "truncation": plain_cfg.truncation,
                     "temp_bytes_plain": mem(plain_c), "temp_bytes_remat": mem(remat_c),
                     "time_remat_over_plain": statistics.median(t_remat) / statistics.median(t_plain)})
    return rows


def bench_host_sync(settings: Settings) -> dict:
    """``float()`` of the metrics after every meta-step against one fetch per block of steps, A, B, A, B."""
    import jax

    from lab.meta.run import METRICS_BLOCK

    *_, state, _, compiled = _meta_case(settings.meta_cases[0][1])
    block = METRICS_BLOCK

    def every_step(s):
        for _ in range(block):
            s, metrics = compiled(s)
            float(metrics["meta_loss"])
        return s

    def per_block(s):
        pending = []
        for _ in range(block):
            s, metrics = compiled(s)
            pending.append(metrics)
        jax.device_get(pending)
        return s

    t_each, t_block = interleave(every_step, (state,), per_block, (state,), 1, max(2, settings.meta_rounds // 4))
    return {"steps": block, "every_step_over_per_block": statistics.median(t_each) / statistics.median(t_block)}


DEVICES_CHILD = """
import json, sys, time, statistics
import jax
jax.config.update("jax_num_cpu_devices", {devices})
sys.path.insert(0, {scripts!r})
import bench
from lab.meta.train import MetaConfig, distribute
config, family, state, step, _ = bench._new_case({overrides!r}, 8)
state = distribute(state, config)
compiled, compile_s = bench._compile(jax.jit(step), state)
row = bench._throughput_of(compiled, state, config, {rounds}, compile_s)
row["devices"] = jax.device_count()
print(json.dumps(row))
"""


def _throughput_of(compiled, state, config, rounds: int, compile_s: float) -> dict:
    ts, _ = interleave(compiled, (state,), lambda: None, (), 2, rounds)
    return {"meta_steps_per_s": 1 / statistics.median(ts), "ms_per_meta_step": _median_ms(ts),
            "inner_steps_per_s": config.tasks * config.truncation / statistics.median(ts), "compile_s": compile_s}


def bench_scaling(settings: Settings) -> dict:
    """Meta-steps per second along each axis from the default config (one axis changed at a time)."""
    rounds = max(2, settings.meta_rounds // 4)
    out = {}
    for axis, values in settings.scaling.items():
        rows = []
        for value in values:
            if axis == "devices":
                code = DEVICES_CHILD.format(devices=value, scripts=str(Path(__file__).resolve().parent),
                                            overrides={"tasks": 32}, rounds=rounds)
                env = {**os.environ, "JAX_PLATFORMS": "cpu"}
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"devices={value}: {proc.stderr.strip().splitlines()[-1:]}")
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                continue
            overrides, dimension = ({}, value) if axis == "dimension" else ({axis: value}, 8)
            config, _, state, _, compiled = _meta_case(overrides, dimension)
            rows.append({axis: value, **_throughput_of(compiled, state, config, rounds,
                                                       _compile_seconds(overrides, dimension))})
        out[axis] = rows
    return out


def bench_digits(settings: Settings) -> list[dict]:
    """Meta-steps per second of the ``digits_mlp`` family's default PES training (its ``meta_defaults``) at each
    task count of ``settings.digits_tasks``."""
    from lab.meta.train import MetaConfig

    defaults, rows = MetaConfig(), []
    for tasks in settings.digits_tasks:
        config = MetaConfig.for_family("digits_mlp", estimator="pes", tasks=tasks, **settings.digits_overrides)
        overrides = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                     if getattr(config, f.name) != getattr(defaults, f.name)}
        config, _, state, _, compiled = _meta_case(overrides)
        rate = _throughput_of(compiled, state, config, max(2, settings.meta_rounds // 4), _compile_seconds(overrides))
        rows.append({"family": "digits_mlp", "estimator": "pes", "tasks": tasks, "truncation": config.truncation,
                     "hidden": config.hidden, **rate})
    return rows


def _fmt(x, spec=".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"machine  {m['platform']} x{m['device_count']} ({m['device_kind']}), {m['cpu_count']} cpus, "
             f"jax {m['jax_version']}, load average {_fmt(m['loadavg_1m_at_start'])} -> "
             f"{_fmt(m['loadavg_1m_at_end'])}",
             f"peak     {r['peak']['gflops_per_s']:.1f} GFLOP/s fp32 ({r['peak']['matmul']}² matmul, median; "
             f"best {r['peak']['best_gflops_per_s']:.1f})"]
    for inner in r["inner_step"]:
        lines.append(f"inner step on one mlp task ({inner['n_params']:,} params), medians in us:")
        lines.append(f"  {'optimizer':<10}{'per call':>10}{'adam':>10}{'ratio':>8}   {'in scan':>9}{'adam':>9}"
                     f"{'ratio':>8}")
        for kind in ("mlp", "lstm"):
            k, s = inner[kind], inner[kind]["in_scan"]
            lines.append(f"  {kind:<10}{k['lopt_us']:>10.1f}{k['adam_us']:>10.1f}{k['ratio']:>8.2f}   "
                         f"{s['lopt_us']:>9.2f}{s['adam_us']:>9.2f}{s['ratio']:>8.2f}")
    lines.append("meta-step, library against the hand-written reference (ms, compile s):")
    for row in r["meta_step"]:
        lines.append(f"  {row['case']:<14}{row['tasks']:>5} tasks x{row['truncation']:>3}, dim {row['dimension']:>3}: "
                     f"{row['library_ms']:8.2f} vs {row['reference_ms']:8.2f}  ratio {row['ratio']:.2f}  "
                     f"(compile {row['library_compile_s']:.1f} / {row['reference_compile_s']:.1f}; meta-loss "
                     f"equal to {row['meta_loss_max_relative_difference']:.0e})")
    check = r["flops"]["check"]
    lines.append(f"flops    counted {check['counted']:,.0f} vs XLA unrolled {_fmt(check['xla_unrolled'], ',.0f')} "
                 f"(ratio {_fmt(check['counted_over_xla_unrolled'])}); XLA plain {_fmt(check['xla_plain'], ',.0f')}")
    for row in r["flops"]["rows"]:
        lines.append(f"  {row['case']:<8}{row['tasks']:>5} tasks: {row['flops_per_meta_step'] / 1e6:10.1f} MFLOP in "
                     f"{row['ms_per_meta_step']:.2f} ms = {row['gflops_per_s']:.2f} GFLOP/s, "
                     f"{row['percent_of_peak']:.1f}% of peak")
    for row in r["remat"]:
        lines.append(f"remat    {row['family']} {row['tasks']} tasks: temp {row['temp_bytes_plain'] / 2**20:.1f} MiB "
                     f"-> {row['temp_bytes_remat'] / 2**20:.1f} MiB, time x{row['time_remat_over_plain']:.2f}")
    lines.append(f"sync     metrics every step / per block of {r['host_sync']['steps']}: "
                 f"x{r['host_sync']['every_step_over_per_block']:.2f}")
    for axis, rows in r["scaling"].items():
        cells = ", ".join(f"{row[axis]}: {row['meta_steps_per_s']:.1f}/s" for row in rows)
        lines.append(f"scaling  {axis:<11}{cells}")
    if r.get("digits"):
        cells = ", ".join(f"{row['tasks']} tasks: {row['meta_steps_per_s']:.2f}/s ({row['ms_per_meta_step']:.0f} ms)"
                          for row in r["digits"])
        lines.append(f"digits   digits_mlp, pes x{r['digits'][0]['truncation']}: {cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    settings, out = parse(argv)
    t0 = time.perf_counter()
    result = {"quick": settings.quick, "machine": machine()}
    result["peak"] = bench_peak(settings)
    result["inner_step"] = [bench_inner_step(settings, options) for options in settings.inner_sizes]
    result["meta_step"] = bench_against_reference(settings)
    result["flops"] = bench_flops(settings, result["peak"])
    result["remat"] = bench_remat(settings)
    result["host_sync"] = bench_host_sync(settings)
    result["scaling"] = bench_scaling(settings)
    result["digits"] = bench_digits(settings)
    result["bench_seconds"] = time.perf_counter() - t0
    result["machine"]["loadavg_1m_at_end"] = _loadavg()
    print(table(result))
    if out is None:
        print(json.dumps(result, indent=2))
    else:
        write_json_atomic(out, result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
