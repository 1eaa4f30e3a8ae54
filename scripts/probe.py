"""Audit an optimizer: which objective does it pursue, and how does it relate to the base objective?

    python scripts/probe.py --optimizer planted:gd_wipes --out reports/gd_wipes
    python scripts/probe.py --optimizer runs/quadratic --out reports/quadratic     # a scripts/train.py run
    python scripts/probe.py --zoo planted --seeds 5 --out reports/zoo

Writes OUT/report.json and OUT/report.html (or, with --zoo, OUT/zoo.json) and prints a table. Bad input ends
with a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lab import families
from lab.io import OneLineParser, write_json_atomic


def parse(argv=None):
    p = OneLineParser(prog="probe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", help="planted:NAME, or a run folder written by scripts/train.py or scripts/icl.py")
    p.add_argument("--family", help="family to audit on (default: the optimizer's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", type=int, help="tasks per rollout (default: the family's, 32 for most, 2048 for "
                   "the in-context family)")
    p.add_argument("--probe", action="append", default=[], help="an extra registered probe (repeatable)")
    p.add_argument("--zoo", choices=["planted"], help="audit the whole zoo: planted members and the learned "
                   "optimizers distilled from three of them")
    p.add_argument("--seeds", type=int, default=1, help="with --zoo: seeds 0 … N−1")
    p.add_argument("--members", help="with --zoo: only these planted members (comma-separated)")
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")
    args = p.parse_args(argv)
    if (args.optimizer is None) == (args.zoo is None):
        p.error("give exactly one of --optimizer and --zoo")
    if (args.tasks is not None and args.tasks <= 0) or args.seeds <= 0:
        p.error("--tasks and --seeds must be positive")
    return args


def load_optimizer(spec: str, family_name: str | None):
    """(optimizer, family, untrained or None) from ``planted:NAME`` or a run folder (``lab.load.load``: a
    meta-training or an in-context run); ``ValueError`` with one line otherwise."""
    untrained = None
    if spec.startswith("planted:"):
        from probes.zoo import planted

        optimizer, family = planted.build(spec.split(":", 1)[1])
    else:
        from lab import runs
        from lab.load import load

        run = Path(spec)
        if not (run / "config.json").is_file():
            raise ValueError(f"{spec} is neither planted:NAME nor a run folder with a config.json")
        try:
            optimizer, family, untrained = load(run)
        except runs.RunError as e:
            raise ValueError(str(e)) from None
    if family_name is not None:
        family = families.make(family_name)
    return optimizer, family, untrained


def main(argv=None) -> int:
    args = parse(argv)
    from probes import report
    import jax

    from probes.subject import Subject, get_probe
    from probes.verdict import audit
    from probes.zoo.jobs import audit_planted

    console = report.log_console()  # as wide as its tables when output is a log, not a terminal
    try:
        for name in args.probe:
            get_probe(name)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.zoo:
            from probes.zoo.jobs import check_names, default_workers

            names = check_names(args.members.split(",")) if args.members else None
            result = audit_planted(names, seeds=range(args.seeds), tasks=args.tasks or 32, workers=default_workers(),
                                   on_entry=lambda e, v: console.print(
                                       f"{'✓' if e.correct else '✗'} {e.name} seed {e.seed}: "
                                       f"{e.label} / {e.pursued}"))
            write_json_atomic(args.out / "zoo.json", {**result, "entries": [e.to_json() for e in result["entries"]]})
            console.print(report.zoo_table(result["entries"]))
            console.print(f"accuracy {result['accuracy']:.3f}; wrote {args.out / 'zoo.json'}")
            return 0
        optimizer, family, untrained = load_optimizer(args.optimizer, args.family)
        subject = Subject(optimizer, family, jax.random.key(args.seed), args.tasks or family.audit_tasks,
                          untrained=untrained)
        verdict = audit(optimizer, family, seed=args.seed, extra=tuple(args.probe), subject=subject)
        report.write_report(args.out, verdict, report.subject_traces(subject))
    except (ValueError, OSError) as e:
        print(f"probe.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    console.print(report.terminal_table(verdict))
    console.print(f"wrote {args.out / 'report.json'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
