"""Approximate alignment from limited capacity: meta-train per-parameter MLP optimizers of several hidden sizes on
the quadratics, audit each, and find the size H* from which they are robust.

    python scripts/capacity.py --out reports/capacity                  # hidden 1,2,4,8,16,32,64 x 5 seeds
    python scripts/capacity.py --hidden 2,8,32 --seeds 3 --out reports/capacity
    python scripts/capacity.py --quick --out reports/capacity-quick    # hidden 2,32 x 2 seeds, 200 meta-steps

Writes OUT/runs/capacity_h<H>-seed<S>-<config hash> (a second call reuses finished runs and resumes interrupted
ones), OUT/capacity.json (per hidden size the labels, residuals and loss ratios per seed; H* per seed with its
median and spread; the rule that defines H*) and OUT/report.html (the figure), as one commit. The sweep is
``probes.zoo.capacity``. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import cli
from lab.io import OneLineParser

MAX_HIDDEN = 4096
QUICK_META_STEPS = 200


hidden_sizes = cli.distinct_positives(MAX_HIDDEN, "hidden sizes")


def parse(argv=None):
    from probes.zoo import capacity as C  # light: no compilation

    p = OneLineParser(prog="capacity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=hidden_sizes, help="hidden sizes, comma-separated (default: "
                   f"{','.join(map(str, C.HIDDEN))}; under --quick {','.join(map(str, C.QUICK_HIDDEN))})")
    p.add_argument("--seeds", type=cli.positive(64), help=f"seeds 0..K-1 per hidden size (default {C.SEEDS}; 2 "
                   "under --quick)")
    p.add_argument("--meta-steps", type=cli.positive(10 ** 7), help="meta-steps per optimizer (default: "
                   f"meta-training's own; {QUICK_META_STEPS} under --quick)")
    p.add_argument("--tasks", type=cli.integer(8, 1 << 16), default=32, help="tasks per audit rollout")
    p.add_argument("--jobs", type=cli.positive(256), help="worker processes (default: one per CPU core up to 4; "
                   "1 on a GPU)")
    p.add_argument("--quick", action="store_true", help="two hidden sizes, two seeds, shorter meta-training")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", type=Path, required=True, help="folder for runs/, capacity.json and report.html")
    args = p.parse_args(argv)
    problem = cli.writable_folder(args.out)
    if problem:
        p.error(f"--out {problem}")
    return args


def config_of(args):
    from probes.zoo import capacity as C

    hidden = args.hidden or (C.QUICK_HIDDEN if args.quick else C.HIDDEN)
    seeds = args.seeds or (2 if args.quick else C.SEEDS)
    steps = args.meta_steps or (QUICK_META_STEPS if args.quick else None)
    return C.SweepConfig(hidden=tuple(hidden), seeds=tuple(range(seeds)), meta_steps=steps, audit_tasks=args.tasks)


def main(argv=None) -> int:
    args = parse(argv)
    from lab import runs
    from lab.io import commit_files, dumps, recover_commits
    from lab.runs import RunError
    from probes.zoo import capacity as C
    from probes.zoo.workers import WorkerDied, default_workers

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    start = time.perf_counter()
    try:
        config = config_of(args)
        total = len(config.hidden) * len(config.seeds)
        done = []

        def on_member(m):
            done.append(m)
            drift = "—" if m["drift"] is None else f"{m['drift']:.3f}"
            say(f"[{len(done)}/{total}] hidden {m['hidden']} seed {m['seed']}: {m['label']} / {m['pursued']}; drift "
                f"{drift} of a step, loss / tuned Adam {m['eval_ratio']:.2f}{' (reused run)' if m['reused'] else ''} "
                f"[{m['seconds']:.0f}s]")

        with runs.lock_report(args.out):  # one sweep writer per folder for its whole run
            args.out.mkdir(parents=True, exist_ok=True)
            recover_commits(args.out)
            say(f"sweeping the hidden size over {list(config.hidden)} with seeds {list(config.seeds)} ({total} "
                "optimizers)")
            record = C.sweep(config, args.out, args.jobs or default_workers(), on_member=on_member)
            record["quick"] = args.quick
            record["wall_seconds"] = round(time.perf_counter() - start, 1)
            commit_files(args.out, {"capacity.json": dumps(record, indent=2, sort_keys=True) + "\n",
                                    "report.html": C.render_page(record)})
    except (ValueError, OSError, RunError) as e:
        print(f"capacity.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except WorkerDied as e:  # not bad input: exit 1; the folder's files are as they were
        print(f"capacity.py: error: {e}", file=sys.stderr)
        return 1
    thr = record["threshold"]
    per_seed = ", ".join(f"seed {s}: {v['h_star']}" for s, v in thr["per_seed"].items())
    print(f"H* median {thr['median']} over {thr['found']}/{thr['seeds']} seeds ({per_seed}); wrote "
          f"{args.out / 'capacity.json'} and {args.out / 'report.html'} in {record['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
