"""Benchmark the learned optimizers against Adam and the meta-training step, all in one process.

    python scripts/bench.py --out bench.json

Measures (1) the inner-step time of the MLP and LSTM learned optimizers over ``optax.adam`` on one ``mlp``
family task, the two interleaved A, B, A, B after warm-up; (2) meta-training throughput of the default
``MetaConfig`` in inner steps per second; (3) the achieved GFLOP/s of the compiled meta-step from XLA's cost
analysis. Prints a short table; writes JSON to --out (to stdout after the table without --out). ``--quick``
is a small configuration for tests. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from lab.io import OneLineParser, write_json_atomic


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int          # interleaved A/B rounds per inner-step comparison (per-call timing)
    warmup: int          # untimed calls of each before timing
    scan_steps: int      # updates per call in the in-scan comparison
    scan_rounds: int     # interleaved rounds of the in-scan comparison
    meta_steps: int      # timed meta-steps
    meta_overrides: dict  # MetaConfig fields changed from the defaults (empty: the default config)
    quick: bool = False


DEFAULT = Settings(rounds=3000, warmup=100, scan_steps=100, scan_rounds=300, meta_steps=300, meta_overrides={})
QUICK = Settings(rounds=200, warmup=10, scan_steps=20, scan_rounds=30, meta_steps=10,
                 meta_overrides={"tasks": 8, "truncation": 5}, quick=True)


def parse(argv=None) -> tuple[Settings, Path | None, float | None]:
    p = OneLineParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the JSON here (default: print it after the table)")
    p.add_argument("--quick", action="store_true", help="small fast configuration (used by the tests)")
    p.add_argument("--rounds", type=int, help=f"interleaved inner-step rounds (default {DEFAULT.rounds}, "
                                               f"quick {QUICK.rounds})")
    p.add_argument("--meta-steps", type=int, help=f"timed meta-steps (default {DEFAULT.meta_steps}, "
                                                   f"quick {QUICK.meta_steps})")
    p.add_argument("--peak-gflops", type=float,
                   help="the machine's peak GFLOP/s, if you know it (e.g. from a datasheet); without it the "
                        "fraction of peak is null")
    args = p.parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        if args.rounds <= 0:
            p.error(f"--rounds must be positive, got {args.rounds}")
        settings = dataclasses.replace(settings, rounds=args.rounds,
                                       scan_rounds=max(1, args.rounds // 10))
    if args.meta_steps is not None:
        if args.meta_steps <= 0:
            p.error(f"--meta-steps must be positive, got {args.meta_steps}")
        settings = dataclasses.replace(settings, meta_steps=args.meta_steps)
    if args.peak_gflops is not None and not (math.isfinite(args.peak_gflops) and args.peak_gflops > 0):
        p.error(f"--peak-gflops must be a positive number, got {args.peak_gflops}")
    if args.out is not None:
        parent = args.out.parent if str(args.out.parent) else Path(".")
        if args.out.is_dir():
            p.error(f"--out {args.out} is a directory; give a file name")
        if not parent.is_dir():
            p.error(f"--out {args.out}: folder {parent} does not exist")
    return settings, args.out, args.peak_gflops


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


def bench_inner_step(settings: Settings) -> dict:
    import jax
    import optax

    from lab import families
    from lab.optimizers.handwritten import from_optax
    from lab.optimizers.learned import LearnedOptimizer

    family = families.make("mlp")
    k_task, k_init, k_obs, k_meta = jax.random.split(jax.random.key(0), 4)

    @jax.jit  # one compile instead of many eager op-by-op ones
    def setup(k_task, k_init, k_obs):
        task = family.sample(k_task)
        params = family.init(k_init, task)
        return params, family.observe(params, task, k_obs)

    params, obs = setup(k_task, k_init, k_obs)
    adam = from_optax(optax.adam(1e-3))
    adam_state = adam.init(params)
    result = {"family": "mlp", "n_params": int(sum(v.size for v in jax.tree.leaves(params))),
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


def _flops(compiled) -> float | None:
    """The "flops" entry of a compiled executable's cost analysis (a dict, or a list of dicts)."""
    cost = compiled.cost_analysis()
    if cost is None:
        return None
    entries = cost if isinstance(cost, (list, tuple)) else [cost]
    values = [e["flops"] for e in entries if isinstance(e, dict) and "flops" in e]
    return float(sum(values)) if values else None


def cost_analysis_counts_loop_trips() -> bool | None:
    """Whether XLA's cost analysis on this backend multiplies a loop body's flops by its trip count: compares
    a 2-trip and an 8-trip ``fori_loop`` of one matmul (XLA's HloCostAnalysis visits a while body once)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64, 64), jnp.float32)

    def flops(n):
        f = jax.jit(lambda x: jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ x), x))
        return _flops(f.lower(x).compile())

    f2, f8 = flops(2), flops(8)
    if not f2 or not f8:
        return None
    return bool(f8 / f2 > 3.0)


def bench_meta(settings: Settings, peak_gflops: float | None) -> tuple[dict, dict]:
    import jax

    from lab.meta.train import MetaConfig, distribute, init_state, make_meta_step

    config = dataclasses.replace(MetaConfig(), **settings.meta_overrides)
    state = init_state(config)
    state = distribute(state, config)  # as lab.meta.run.train does
    devices = len(jax.tree.leaves(state.estimator_state)[0].sharding.device_set)
    meta_step = jax.jit(make_meta_step(config))
    t0 = time.perf_counter()
    compiled = meta_step.lower(state).compile()  # the jit call below reuses this executable
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)

    state, _ = meta_step(state)  # warm-up
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(settings.meta_steps):
        state, metrics = meta_step(state)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - t0

    per_step = seconds / settings.meta_steps
    inner = settings.meta_steps * config.tasks * config.truncation
    meta = {
        "config": config.to_json(), "default_config": not settings.meta_overrides,
        "sharded_over_devices": devices, "compile_s": compile_s, "meta_steps": settings.meta_steps,
        "seconds": seconds, "meta_steps_per_s": settings.meta_steps / seconds,
        "inner_steps_per_s": inner / seconds, "last_meta_loss": float(metrics["meta_loss"]),
    }
    counts_trips = cost_analysis_counts_loop_trips()
    gflops = None if flops is None else flops / per_step / 1e9
    result = {
        "flops_per_meta_step": flops,
        "seconds_per_meta_step": per_step,
        "gflops_per_s": gflops,
        "peak_gflops_per_s": peak_gflops,
        "fraction_of_peak": None if (peak_gflops is None or gflops is None) else gflops / peak_gflops,
        "peak_source": ("--peak-gflops (given by the user)" if peak_gflops is not None else
                        f"unknown: not determinable on {jax.default_backend()} without guessing"),
        "cost_analysis_counts_loop_trips": counts_trips,
    }
    if counts_trips is False:
        result["note"] = ("XLA's cost analysis on this backend counts a loop body once, not once per trip, and "
                          "the meta-step is a lax.scan over the truncation: flops_per_meta_step and gflops_per_s "
                          "are lower bounds (transcendentals are not counted as flops either)")
    return meta, result


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def table(r: dict) -> str:
    m, inner, meta, fl = r["machine"], r["lopt_step_over_adam"], r["meta_training"], r["flops"]
    lines = [f"machine  {m['platform']} x{m['device_count']} ({m['device_kind']}), {m['cpu_count']} cpus, "
             f"jax {m['jax_version']}, load average {_fmt(m['loadavg_1m_at_start'])} -> "
             f"{_fmt(m['loadavg_1m_at_end'])}",
             f"inner step on one mlp task ({inner['n_params']} params), medians in us:",
             f"  {'optimizer':<10}{'per call':>10}{'adam':>10}{'ratio':>8}   {'in scan':>9}{'adam':>9}{'ratio':>8}"]
    for kind in ("mlp", "lstm"):
        k, s = inner[kind], inner[kind]["in_scan"]
        lines.append(f"  {kind:<10}{k['lopt_us']:>10.1f}{k['adam_us']:>10.1f}{k['ratio']:>8.2f}   "
                     f"{s['lopt_us']:>9.2f}{s['adam_us']:>9.2f}{s['ratio']:>8.2f}")
    c = meta["config"]
    lines.append(f"meta-training ({c['family']}, {c['optimizer']}, {c['estimator']}, {c['tasks']} tasks x "
                 f"{c['truncation']} steps): {meta['meta_steps_per_s']:.1f} meta-steps/s, "
                 f"{meta['inner_steps_per_s']:,.0f} inner steps/s (compile {meta['compile_s']:.1f} s)")
    gflops = "n/a" if fl["gflops_per_s"] is None else f"{fl['gflops_per_s']:.3f} GFLOP/s"
    peak = "peak unknown" if fl["fraction_of_peak"] is None else f"{100 * fl['fraction_of_peak']:.2f}% of peak"
    bound = " (lower bound: loop bodies counted once)" if fl["cost_analysis_counts_loop_trips"] is False else ""
    flops = "n/a" if fl["flops_per_meta_step"] is None else f"{fl['flops_per_meta_step']:,.0f}"
    lines.append(f"flops    {flops} per meta-step, {gflops}, {peak}{bound}")
    return "\n".join(lines)


def main(argv=None) -> int:
    settings, out, peak = parse(argv)
    t0 = time.perf_counter()
    result = {"quick": settings.quick,
              "machine": machine(), "lopt_step_over_adam": bench_inner_step(settings)}
    result["meta_training"], result["flops"] = bench_meta(settings, peak)
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
