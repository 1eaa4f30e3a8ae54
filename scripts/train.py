"""Meta-train a learned optimizer on a task family and evaluate it against tuned Adam.

    python scripts/train.py --family quadratic --optimizer mlp --out runs/quadratic

Writes OUT/config.json, OUT/metrics.jsonl, OUT/checkpoints/ and OUT/summary.json. ``--resume`` continues the
newest checkpoint in OUT. Bad input ends with a one-line error and exit code 2, and leaves OUT as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lab import cli, families
from lab.io import OneLineParser
from lab.meta.run import RunError, prepare, train
from lab.meta.train import ESTIMATORS, OPTIMIZERS, MetaConfig


def parse(argv=None) -> tuple[MetaConfig, Path, bool, bool]:
    defaults = MetaConfig()
    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default=defaults.family,
                   help=f"task family: {', '.join(families.names())}, or MODULE:CLASS (a family of your own: an "
                   "importable module or a .py file, and its TaskFamily subclass)")
    p.add_argument("--optimizer", default=defaults.optimizer, help=f"learned optimizer: {', '.join(OPTIMIZERS)}")
    p.add_argument("--estimator", default=defaults.estimator, help=f"meta-gradient: {', '.join(ESTIMATORS)}")
    p.add_argument("--meta-steps", type=cli.positive(10 ** 9), default=defaults.meta_steps,
                   help="outer updates (with --resume: at least the run's; more extends it)")
    p.add_argument("--seed", type=cli.seed, default=defaults.seed, help="PRNG seed of the whole run, 0 to 2**63-1")
    p.add_argument("--tasks", type=cli.positive(1 << 16), default=defaults.tasks, help="tasks per meta-step")
    p.add_argument("--truncation", type=cli.positive(1 << 16), default=defaults.truncation,
                   help="inner steps per meta-step")
    p.add_argument("--meta-lr", type=cli.real(0, lo_open=True), default=defaults.meta_lr,
                   help="Adam learning rate of the meta-parameters")
    p.add_argument("--loss-floor", type=cli.real(hi=0, hi_open=True), default=defaults.loss_floor,
                   help="clip the per-step log meta-loss below at this negative value (e.g. -8; None: no floor)")
    p.add_argument("--checkpoint-every", type=cli.positive(), default=defaults.checkpoint_every,
                   help="meta-steps between checkpoints (the two newest are kept)")
    p.add_argument("--eval-tasks", type=cli.positive(1 << 20), default=defaults.eval_tasks,
                   help="held-out tasks of the final evaluation against tuned Adam")
    p.add_argument("--features", help="the learned optimizer's input features, comma-separated (e.g. "
                   "grad,mom0.9,grad:wipes,param,loss,step10); default: the family's default set")
    p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=defaults.remat,
                   help="rematerialise each inner step in the backward pass (a second forward pass for a quarter of "
                        "the memory; scripts/bench.py measures both)")
    p.add_argument("--out", type=Path, required=True, help="run folder (must be empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        family = families.resolve(args.family)  # MODULE:CLASS imports and registers the user's family
    except ValueError as e:
        p.error(str(e).splitlines()[0])
    features = None if args.features is None else tuple(f.strip() for f in args.features.split(","))
    config = dataclasses.replace(
        defaults, family=family, features=features, optimizer=args.optimizer, estimator=args.estimator,
        meta_steps=args.meta_steps, seed=args.seed, tasks=args.tasks, truncation=args.truncation,
        meta_lr=args.meta_lr, loss_floor=args.loss_floor, checkpoint_every=args.checkpoint_every, eval_tasks=args.eval_tasks,
        remat=args.remat)
    return config, args.out, args.resume, args.quiet


def main(argv=None) -> int:
    config, out, resume, quiet = parse(argv)
    try:
        prepare(config, out, resume)
    except RunError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lab.io import dumps

    columns = (TextColumn("[bold]{task.description}[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, disable=quiet, transient=False) as progress:
        # The bar stands still until the first block of metrics: say why (compiling takes seconds to minutes).
        bar = progress.add_task("compiling", total=config.meta_steps, loss=float("nan"))
        if not quiet:
            progress.console.print(f"compiling the meta-step of {config.family} / {config.optimizer} / "
                                   f"{config.estimator}; the bar moves once it runs")

        def on_step(step, record):
            loss = record["meta_loss"]
            done = step == config.meta_steps
            progress.update(bar, completed=step, loss=float("nan") if loss is None else loss,
                            description="evaluating against tuned Adam" if done else "meta-train")

        try:
            summary = train(config, out, resume=resume, on_step=on_step)
        except RunError as e:
            print(f"train.py: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # a full disk or a folder gone mid-run: the last checkpoint is intact, resume later
            print(f"train.py: error: writing {out} failed ({e.strerror or e}); fix it and continue with --resume",
                  file=sys.stderr)
            return 2
    print(dumps(summary["eval"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
