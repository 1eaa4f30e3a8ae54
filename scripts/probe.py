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

from lab import cli, families
from lab.io import OneLineParser, write_json_atomic


def _registries() -> str:
    """The ``--help`` epilog: every planted member and every registered probe (imported only for ``--help``)."""
    import textwrap

    from probes import verdict
    from probes.subject import PROBES
    from probes.zoo.jobs import zoo_names

    def block(title, names):
        return title + "\n" + textwrap.fill(", ".join(names), 100, initial_indent="  ", subsequent_indent="  ")

    extra = [n for n in sorted(PROBES) if n not in verdict.DEFAULT_PROBES]
    return "\n\n".join([block("planted members (--optimizer planted:NAME, --members):", zoo_names()),
                         block("probes run by default:", verdict.DEFAULT_PROBES),
                         block("more probes (--probe NAME; a family may add its own):", extra)])


def parse(argv=None):
    p = OneLineParser(prog="probe.py", description=__doc__.split("\n\n")[0], epilog=_registries)
    p.add_argument("--optimizer", help="planted:NAME, or a run folder written by scripts/train.py or scripts/icl.py")
    p.add_argument("--family", help="family to audit on (default: the optimizer's own): a registered name, or "
                   "MODULE:CLASS to import and register a family of your own first")
    p.add_argument("--seed", type=cli.seed, default=0, help="PRNG seed of every rollout of the audit")
    p.add_argument("--tasks", type=cli.positive(1 << 16), help="tasks per rollout (default: the family's, 32 "
                   "for most, 2048 for the in-context family)")
    p.add_argument("--probe", action="append", default=[], help="an extra registered probe (repeatable; listed "
                   "below)")
    p.add_argument("--zoo", choices=["planted"], help="audit the whole zoo: planted members and the learned "
                   "optimizers distilled from three of them")
    p.add_argument("--seeds", type=cli.positive(10_000), default=1, help="with --zoo: seeds 0 … N−1")
    p.add_argument("--members", help="with --zoo: only these planted members (comma-separated; default: all)")
    p.add_argument("--out", type=Path, required=True, help="folder for the reports (created; a report folder "
                   "holds one report, replaced whole)")
    args = p.parse_args(argv)
    if (args.optimizer is None) == (args.zoo is None):
        p.error("give exactly one of --optimizer and --zoo")
    if args.members is not None and not [n for n in args.members.split(",") if n.strip()]:
        p.error("--members names no planted member")
    problem = cli.writable_folder(args.out)  # probed before a minute of auditing, not after
    if problem:
        p.error(f"--out {problem}")
    if args.optimizer is not None and not args.optimizer.startswith("planted:"):
        problem = cli.run_folder(args.optimizer)
        if problem and (Path(args.optimizer) / "config.json").is_file():
            p.error(problem)  # a run folder, but one with nothing to audit
    return args


def load_optimizer(spec: str, family_name: str | None):
    """(optimizer, family, untrained or None) from ``planted:NAME`` or a run folder (``lab.load.load``: a
    meta-training or an in-context run); ``ValueError`` with one line otherwise. ``family_name`` may be
    ``MODULE:CLASS`` (``lab.families.resolve``), registered before the run folder is read, so a run meta-trained
    on a user's family loads."""
    untrained = None
    family_name = None if family_name is None else families.resolve(family_name)
    if spec.startswith("planted:"):
        from probes.zoo.jobs import build_member

        optimizer, family = build_member(spec.split(":", 1)[1])  # a planted member or one distilled from it
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


def _zoo(args, console) -> int:
    """``--zoo planted``: every member (or ``--members``) on every seed, a bar over the audits, ``zoo.json``."""
    from probes import report
    from probes.zoo.jobs import audit_planted, check_names, zoo_names
    from probes.zoo.workers import default_workers

    names = check_names(n.strip() for n in args.members.split(",") if n.strip()) if args.members else zoo_names()
    with report.progress() as bars:
        bar = bars.add_task("auditing the planted zoo", total=len(names) * args.seeds)

        def on_entry(e, v):
            bars.console.print(f"{'✓' if e.correct else '✗'} {e.name} seed {e.seed}: {e.label} / {e.pursued}")
            bars.advance(bar)

        result = audit_planted(names, seeds=range(args.seeds), tasks=args.tasks or 32, workers=default_workers(),
                               on_entry=on_entry)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "zoo.json", {**result, "entries": [e.to_json() for e in result["entries"]]})
    console.print(report.zoo_table(result["entries"]))
    console.print(f"accuracy {result['accuracy']:.3f}; wrote {args.out / 'zoo.json'}")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    from probes import report
    import jax

    from lab import runs
    from lab.io import clean_folder_leftovers, unit_folder_problem
    from probes.subject import Subject, get_probe
    from probes.verdict import audit
    from probes.zoo.workers import WorkerDied

    console = report.log_console()  # as wide as its tables when output is a log, not a terminal
    try:
        for name in args.probe:
            get_probe(name)
        if args.family is not None:
            args.family = families.resolve(args.family)  # a bad MODULE:CLASS fails before anything is written
        with runs.lock_report(args.out):  # one writer per report folder for the whole audit; a second is refused
            clean_folder_leftovers(args.out)  # what a killed writer of this folder left beside it
            if args.zoo:
                return _zoo(args, console)
            problem = unit_folder_problem(args.out, report.REPORT_FILES)
            if problem:  # before the audit, not after it
                raise ValueError(problem)
            optimizer, family, untrained = load_optimizer(args.optimizer, args.family)
            subject = Subject(optimizer, family, jax.random.key(args.seed), args.tasks or family.audit_tasks,
                              untrained=untrained)
            with report.progress() as bars:
                bar = bars.add_task("compiling the first rollouts", total=None)
                bars.console.print(f"auditing {args.optimizer} on {family.name}: each probe compiles its rollouts "
                                   f"the first time (10–60 s in all on a CPU)")

                def on_probe(name, done, total):
                    bars.update(bar, completed=done, total=total + 1, description=f"probe {name}")

                verdict = audit(optimizer, family, seed=args.seed, extra=tuple(args.probe), subject=subject,
                                on_probe=on_probe)
                bars.update(bar, description="figures and files")
                traces = report.subject_traces(subject)
                report.write_report(args.out, verdict, traces)
                bars.update(bar, completed=bars.tasks[0].total)
    except (ValueError, OSError, runs.RunError) as e:
        print(f"probe.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except WorkerDied as e:  # not bad input: exit 1; the folder's files are as they were
        print(f"probe.py: error: {e}", file=sys.stderr)
        return 1
    console.print(report.terminal_table(verdict))
    console.print(f"wrote {args.out / 'report.json'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
