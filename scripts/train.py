"""Meta-train a learned optimizer on a task family and evaluate it against tuned Adam.

    python scripts/train.py --family quadratic --optimizer mlp --out runs/quadratic

Writes OUT/config.json, OUT/metrics.jsonl, OUT/checkpoints/ and OUT/summary.json. ``--resume`` continues the
newest checkpoint in OUT. Bad input ends with a one-line error and exit code 2, and leaves OUT as it was.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from lab import families
from lab.io import OneLineParser
from lab.meta.run import RunError, prepare, train
from lab.meta.train import ESTIMATORS, OPTIMIZERS, MetaConfig


def parse(argv=None) -> tuple[MetaConfig, Path, bool, bool]:
    defaults = MetaConfig()
    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default=defaults.family, help=f"task family: {', '.join(families.names())}")
    p.add_argument("--optimizer", default=defaults.optimizer, help=f"learned optimizer: {', '.join(OPTIMIZERS)}")
    p.add_argument("--estimator", default=defaults.estimator, help=f"meta-gradient: {', '.join(ESTIMATORS)}")
    p.add_argument("--meta-steps", type=int, default=defaults.meta_steps, help="outer updates")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--tasks", type=int, default=defaults.tasks, help="tasks per meta-step")
    p.add_argument("--truncation", type=int, default=defaults.truncation, help="inner steps per meta-step")
    p.add_argument("--meta-lr", type=float, default=defaults.meta_lr)
    p.add_argument("--loss-floor", type=float, default=defaults.loss_floor,
                   help="clip the per-step log meta-loss below at this (negative) value; default: no floor")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks)
    p.add_argument("--out", type=Path, required=True, help="run folder (must be empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    config = dataclasses.replace(
        defaults, family=args.family, optimizer=args.optimizer, estimator=args.estimator,
        meta_steps=args.meta_steps, seed=args.seed, tasks=args.tasks, truncation=args.truncation,
        meta_lr=args.meta_lr, loss_floor=args.loss_floor, checkpoint_every=args.checkpoint_every, eval_tasks=args.eval_tasks)
    return config, args.out, args.resume, args.quiet


def main(argv=None) -> int:
    config, out, resume, quiet = parse(argv)
    try:
        prepare(config, out, resume)
    except RunError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]meta-train[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, disable=quiet, transient=False) as progress:
        bar = progress.add_task("train", total=config.meta_steps, loss=float("nan"))

        def on_step(step, record):
            progress.update(bar, completed=step, loss=record["meta_loss"])

        try:
            summary = train(config, out, resume=resume, on_step=on_step)
        except RunError as e:
            print(f"train.py: error: {e}", file=sys.stderr)
            return 2
    print(json.dumps(summary["eval"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
