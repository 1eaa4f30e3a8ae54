"""The task-diversity transition in context (Raventós et al. 2023, "Pretraining task diversity and the emergence of
non-Bayesian in-context learning for regression"): sweep the size M of the pretraining task pool, audit each model,
and find the threshold M* above which it pursues ridge regression instead of the pool posterior.

    python scripts/diversity.py --out reports/diversity                    # 7 pool sizes x 3 seeds
    python scripts/diversity.py --pools 1,4,16,64,1024 --seeds 5 --out reports/diversity
    python scripts/diversity.py --quick --out reports/diversity-quick      # 4 pool sizes x 2 seeds, shorter training

Writes OUT/runs/<model>-seed<S>-<config hash> (a second call reuses finished runs and resumes interrupted ones),
OUT/audits/<run>.json (each run's audit numbers, reused while the run and the audit settings are the same),
OUT/diversity.json (per M the labels, the fresh-task and pool-task losses of the model, the dMMSE and ridge per
seed; M* per seed with its median and spread; the rule that defines M*) and OUT/report.html (the figure), as one
commit. The sweep is ``probes.zoo.diversity``. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import cli
from lab.io import OneLineParser

MAX_POOL = 1 << 20


pool_sizes = cli.distinct_positives(MAX_POOL, "pool sizes")


def parse(argv=None):
    from probes.zoo import diversity as D  # light: jax and the lab's modules, no compilation

    p = OneLineParser(prog="diversity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pools", type=pool_sizes, help="pool sizes M, comma-separated (default: "
                   f"{','.join(map(str, D.POOLS))}; under --quick {','.join(map(str, D.QUICK_POOLS))})")
    p.add_argument("--seeds", type=cli.positive(64), help=f"seeds 0..K-1 per pool size (default {D.SEEDS}; "
                   "2 under --quick)")
    p.add_argument("--seed", type=cli.seed, default=0, help="seed of the measurement tasks (each member's own "
                   "seed trains, audits and draws its pool)")
    p.add_argument("--steps", type=cli.positive(10 ** 7), help=f"training steps per model (default "
                   f"{D.TRAIN.steps}; {D.QUICK_TRAIN.steps} under --quick)")
    p.add_argument("--audit-tasks", type=cli.integer(16, 1 << 16), default=512, help="tasks of each audit")
    p.add_argument("--eval-tasks", type=cli.integer(16, 1 << 20), default=4096,
                   help="tasks of each loss measurement (pool tasks and, separately, fresh ones)")
    p.add_argument("--full-audit", action="store_true", help="run every default probe, not only those the "
                   "in-context class rule reads (the same label, several times slower)")
    p.add_argument("--quick", action="store_true", help="fewer pool sizes and seeds, shorter training")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", type=Path, required=True, help="folder for runs/, diversity.json and report.html")
    args = p.parse_args(argv)
    problem = cli.writable_folder(args.out)
    if problem:
        p.error(f"--out {problem}")
    return args


def config_of(args):
    import dataclasses

    from probes.zoo import diversity as D

    train = D.QUICK_TRAIN if args.quick else D.TRAIN
    if args.steps:
        train = dataclasses.replace(train, steps=args.steps, eval_every=min(train.eval_every, args.steps))
    pools = args.pools or (D.QUICK_POOLS if args.quick else D.POOLS)
    seeds = args.seeds or (2 if args.quick else D.SEEDS)
    return D.SweepConfig(pools=tuple(pools), seeds=tuple(range(seeds)), train=train, audit_tasks=args.audit_tasks,
                         eval_tasks=args.eval_tasks, full_audit=args.full_audit)


def main(argv=None) -> int:
    args = parse(argv)
    import jax

    from lab import runs
    from lab.io import commit_files, dumps, recover_commits
    from lab.runs import RunError
    from probes.zoo import diversity as D

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    start = time.perf_counter()
    try:
        config = config_of(args)
        total = len(config.pools) * len(config.seeds)
        done = []

        def on_member(e):
            done.append(e)
            f, d = e["losses"]["fresh"], e["distances"]["fresh"]
            reused = [w for w, r in (("run", e["reused"]), ("audit", e["audit_reused"])) if r]
            say(f"[{len(done)}/{total}] M={e['pool']} seed {e['seed']}: {e['label']} / {e['pursued']}; fresh loss "
                f"{f['model']:.3f} (dMMSE {f['dmmse']:.3f}, ridge {f['ridge']:.3f}), RMS from dMMSE {d['dmmse']:.3f}, "
                f"from ridge {d['ridge']:.3f}: {'ridge' if e['ridge_side'] else 'pool'} side"
                f"{' (reused ' + ' and '.join(reused) + ')' if reused else ''} "
                f"[train {e['train_seconds']:.0f}s, audit {e['audit_seconds']:.0f}s]")

        with runs.lock_report(args.out):  # one sweep writer per folder for its whole run
            args.out.mkdir(parents=True, exist_ok=True)
            recover_commits(args.out)
            say(f"sweeping M over {list(config.pools)} with seeds {list(config.seeds)} ({total} models)")
            record = D.sweep(config, args.out, jax.random.key(args.seed), on_member=on_member)
            record["seed"] = args.seed
            record["quick"] = args.quick
            record["wall_seconds"] = round(time.perf_counter() - start, 1)
            commit_files(args.out, {"diversity.json": dumps(record, indent=2, sort_keys=True) + "\n",
                                    "report.html": D.render_page(record)})
    except (ValueError, OSError, RunError) as e:
        print(f"diversity.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    thr = record["threshold"]
    per_seed = ", ".join(f"seed {s}: {v['m_star']}" for s, v in thr["per_seed"].items())
    print(f"M* median {thr['median']} over {thr['found']}/{thr['seeds']} seeds ({per_seed}); wrote "
          f"{args.out / 'diversity.json'} and {args.out / 'report.html'} in {record['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
