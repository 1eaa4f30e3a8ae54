"""Meta-train a learned optimizer on a task family and evaluate it against tuned Adam.

    python scripts/train.py --family quadratic --optimizer mlp --out runs/quadratic

Writes OUT/config.json, OUT/metrics.jsonl, OUT/checkpoints/ and OUT/summary.json. ``--resume`` continues the
newest checkpoint in OUT. Bad input ends with a one-line error and exit code 2, and leaves OUT as it was.
A flag left out takes the family's own default where it declares one (``TaskFamily.meta_defaults``, listed by
``--help``). Over several processes (``jax.distributed``: ``--coordinator-address``, ``--num-processes``,
``--process-id``, their ``JAX_*`` variables, or ``--distributed`` under SLURM or Kubernetes) every process runs
the same command and process 0 writes OUT (README, "Meta-training across processes").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab import cli, families, sharding
from lab.io import OneLineParser
from lab.meta.run import RunError, prepare, train
from lab.meta.train import ESTIMATORS, OPTIMIZERS, MetaConfig


# The flags that set MetaConfig fields: one the user leaves out takes the family's default (MetaConfig.for_family).
CONFIG_FLAGS = ("optimizer", "estimator", "meta_steps", "seed", "tasks", "truncation", "meta_lr", "meta_lr_final",
                "loss_floor", "checkpoint_every", "eval_tasks", "features", "remat", "eval_horizons", "eval_shifts")
_UNSET = object()


def _family_defaults() -> str:
    own = {name: families.make(name).meta_defaults for name in families.names()}
    lines = [f"  {name}: " + ", ".join(f"{k.replace('_', '-')} {_show(v)}" for k, v in fields.items())
             for name, fields in own.items() if fields]
    return "families with defaults of their own (a flag given wins):\n" + "\n".join(lines) if lines else ""


def _multiples(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers."""
    return tuple(cli.positive(1000)(part.strip()) for part in text.split(",") if part.strip())


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def parse(argv=None) -> tuple[MetaConfig, Path, bool, bool, argparse.Namespace]:
    defaults = MetaConfig()
    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0], epilog=_family_defaults)
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
    p.add_argument("--meta-lr-final", type=cli.real(0, lo_open=True), default=defaults.meta_lr_final,
                   help="cosine-decay the meta learning rate to this over the run (default: constant)")
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
    p.add_argument("--eval-horizons", type=_multiples, default=defaults.eval_horizons,
                   help="extra rows of the final evaluation at these multiples of the horizon, comma-separated "
                        "(e.g. 4,10)")
    p.add_argument("--eval-shifts", type=lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
                   default=defaults.eval_shifts, help="extra rows of the final evaluation under these shifts of the "
                                                      "family, comma-separated (e.g. wider)")
    p.add_argument("--out", type=Path, required=True, help="run folder (must be empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("several processes (README, \"Meta-training across processes\")")
    group.add_argument("--coordinator-address", help="HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=cli.positive(), help="processes in the run (default: "
                       "$JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=cli.integer(0), help="this process's index (default: $JAX_PROCESS_ID)")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run whose settings JAX detects from the cluster (SLURM, Open MPI, "
                            "Kubernetes) where neither the flags above nor their variables give them")
    # Flags of config fields start unset (argparse keeps a value already in the namespace), so the family's
    # defaults fill exactly those the user left out.
    args = p.parse_args(argv, namespace=argparse.Namespace(**{name: _UNSET for name in CONFIG_FLAGS}))
    try:
        family = families.resolve(args.family)  # MODULE:CLASS imports and registers the user's family
    except ValueError as e:
        p.error(str(e).splitlines()[0])
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not _UNSET}
    if isinstance(given.get("features"), str):
        given["features"] = tuple(f.strip() for f in given["features"].split(","))
    try:
        config = MetaConfig.for_family(family, **given)
    except ValueError as e:
        p.error(str(e).splitlines()[0])
    return config, args.out, args.resume, args.quiet, args


def main(argv=None) -> int:
    config, out, resume, quiet, args = parse(argv)
    try:  # before anything touches a JAX backend
        joined = sharding.initialize(args.coordinator_address, args.num_processes, args.process_id, args.distributed)
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    writer = sharding.is_writer() if joined else True
    quiet = quiet or not writer  # one progress bar: process 0's
    if not joined:  # refused before the progress bar; a multi-process run is refused inside train, on every process
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
    # Process 0 prints the evaluation; any other process the checksum of its meta-parameters (equal to process 0's).
    print(dumps(summary["eval"] if "eval" in summary else {k: summary[k] for k in ("process", "meta_params_sha256")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
