"""The lab's main job: meta-train the scenario optimizers, audit them and the planted zoo, and compare the
classes found with the classes expected.

    python scripts/zoo.py --quick                 # a few minutes on a laptop CPU
    python scripts/zoo.py --out zoo               # the full zoo
    python scripts/zoo.py --seeds 5 --out zoo     # every scenario meta-trained on seeds 0…4

Writes OUT/zoo.json (entries with "kind": "learned", "incontext", "planted" or "distilled"; with several
seeds, each scenario's label distribution) and OUT/report.html (the table, then a section per entry), prints the
table, and keeps the meta-training runs under OUT/runs/ so a second call reuses them. Bad input ends with a
one-line error and exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import cli
from lab.io import OneLineParser

# Under --quick the planted zoo is represented by one member of each kind of answer it checks.
QUICK_PLANTED = ("gd", "random_walk", "gd_wipes", "gd_vacuum", "gd_cookies_capped", "cue_conditional")


def parse(argv=None):
    p = OneLineParser(prog="zoo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("zoo"), help="folder for zoo.json, report.html and runs/")
    p.add_argument("--quick", action="store_true",
                   help=f"shorter meta-training, no scenario marked long (digits), and of the planted zoo only "
                   f"{', '.join(QUICK_PLANTED)}")
    p.add_argument("--seeds", type=cli.positive(1000), default=1, help="meta-train every scenario on seeds 0 … N−1")
    p.add_argument("--scenarios", help="only these learned scenarios (comma-separated; default: all, or all but "
                   "the long ones under --quick)")
    p.add_argument("--planted", help="planted members to audit: all, none, or comma-separated names "
                   "(default: all, or the quick sample under --quick)")
    p.add_argument("--no-incontext", dest="incontext", action="store_false",
                   help="leave out the in-context models (under --quick only the one-layer model runs)")
    p.add_argument("--tasks", type=cli.positive(1 << 16), default=32, help="tasks per audit rollout")
    p.add_argument("--family", action="append", default=[], metavar="MODULE:CLASS",
                   help="a family of your own (repeatable): imported, registered, and added as a learned scenario "
                   "meta-trained and audited on it, hypothesis robust on its base")
    p.add_argument("--jobs", type=cli.positive(256),
                   help="worker processes (default: one per CPU core up to 4; 1 on a GPU)")
    args = p.parse_args(argv)
    for flag in ("scenarios", "planted"):  # a list that names nothing would run an empty zoo and report 0/0
        spec = getattr(args, flag)
        if spec is not None and not [n for n in spec.split(",") if n.strip()]:
            p.error(f"--{flag} names nothing (give names, or 'none' to leave them all out)")
    problem = cli.writable_folder(args.out)
    if problem:
        p.error(f"--out {problem}")
    return args


def _names(spec: str | None, known: list[str], default: list[str], what: str) -> list[str]:
    if spec is None:
        return default
    if spec == "all":
        return known
    if spec == "none":
        return []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    return names


def main(argv=None) -> int:
    args = parse(argv)
    from lab import families, runs
    from lab.io import recover_commits
    from lab.meta.run import RunError
    from probes import report
    from probes.zoo import jobs as zoo, scenarios
    from probes.zoo.workers import WorkerDied

    console = report.log_console()  # as wide as its tables when output is a log, not a terminal
    try:
        learned = _names(args.scenarios, list(scenarios.SCENARIOS), scenarios.default_names(args.quick), "scenario")
        planted_default = list(QUICK_PLANTED) if args.quick else zoo.zoo_names()
        planted = _names(args.planted, zoo.zoo_names(), planted_default, "planted member")
        own = {spec: scenarios.for_family(families.resolve(spec)) for spec in args.family}  # bad specs fail here
        if not (learned or own or planted or args.incontext):
            raise ValueError("nothing to run: every scenario, planted member and in-context model is left out")
    except (ValueError, OSError) as e:
        print(f"zoo.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        with runs.lock_report(args.out):  # one zoo writer per folder for its whole run; a second is refused
            args.out.mkdir(parents=True, exist_ok=True)
            recover_commits(args.out)  # finish, or drop, the report a killed writer was committing
            return _run(args, console, learned, planted, own)
    except (RunError, OSError) as e:
        print(f"zoo.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except WorkerDied as e:  # not bad input: exit 1; the folder's zoo.json and report.html are as they were
        print(f"zoo.py: error: {e}", file=sys.stderr)
        return 1


def _run(args, console, learned: list[str], planted: list[str], own: dict) -> int:
    """The zoo's work, holding its folder's lock: the jobs (a bar with the time left), then ``zoo.json`` and
    ``report.html`` written as one commit (``lab.io.commit_files``), so the two always describe the same run."""
    from lab.io import commit_files, dumps
    from lab.meta.run import RunError
    from probes import report
    from probes.zoo import jobs as zoo, scenarios, workers as pool

    start = time.time()
    # Every job draws its own section of the page (zoo.Rendered): in the worker processes, side by side.
    jobs = [(zoo.Rendered(zoo.learned_job), (name, seed, str(args.out), args.quick, args.tasks))
            for name in learned for seed in range(args.seeds)]
    jobs += [(zoo.Rendered(zoo.family_job), (spec, seed, str(args.out), args.quick, args.tasks))
             for spec in own for seed in range(args.seeds)]
    first_incontext = len(jobs)
    if args.incontext:  # under --quick only the one-layer model
        from probes.zoo import incontext

        models = incontext.suite(args.quick)[:1] if args.quick else incontext.suite(args.quick)
        jobs += [(zoo.Rendered(incontext.incontext_job), (m.name, 0, str(args.out), args.quick)) for m in models]
    incontext_jobs = range(first_incontext, len(jobs))
    jobs += [(zoo.Rendered(zoo.planted_job), (name, 0, args.tasks)) for name in planted]
    # The in-context jobs start first: each is the zoo's longest (a training, then an audit of 2,048 tasks), and one
    # started last kept a worker busy while the other had nothing left. The page lists the jobs in their order.
    order = [*incontext_jobs, *(i for i in range(len(jobs)) if i not in incontext_jobs)]
    workers = args.jobs or pool.default_workers()
    console.print(f"{len(jobs)} jobs: {(len(learned) + len(own)) * args.seeds} learned scenarios (meta-trained, or "
                  f"reused from {args.out / 'runs'}){', the in-context models' if args.incontext else ''} and "
                  f"{len(planted)} planted members, on {workers} worker process{'es' if workers > 1 else ''}")

    bars = report.progress(console=console)  # the finished jobs' lines print above the bar
    bar = bars.add_task("zoo jobs (meta-training first, then audits)", total=len(jobs))

    def done(_, result):  # every job returns (Entry, Verdict, its page section)
        entry = result[0]
        tail = f" (expected {entry.expected} / {entry.expected_pursued or 'any'})" if not entry.correct else ""
        reused = " (reused run)" if entry.details.get("reused") else ""
        console.print(f"{'✓' if entry.correct else '✗'} {entry.kind} {entry.name} seed {entry.seed}: "
                      f"{entry.label} / {entry.pursued}{tail}{reused}")
        bars.advance(bar)

    try:
        with bars:
            ran = pool.run_jobs([jobs[i] for i in order], workers, done)
    except RunError as e:
        print(f"zoo.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    results = [ran[order.index(i)] for i in range(len(jobs))]
    entries = [entry for entry, _, _ in results]
    sections = [section for _, _, section in results]

    def accuracy(hypotheses: bool | None = None):
        """Over every entry, or only those whose expectation is a hypothesis (learned, in-context) or a known
        answer (planted, distilled)."""
        chosen = [e for e in entries if hypotheses is None or e.is_hypothesis == hypotheses]
        return sum(e.correct for e in chosen) / len(chosen) if chosen else None

    distribution = scenarios.label_distribution(entries)
    result = {"accuracy": accuracy(), "learned_accuracy": accuracy(True), "planted_accuracy": accuracy(False),
              "scenarios": distribution, "entries": [e.to_json() for e in entries], "seeds": args.seeds,
              "quick": args.quick, "tasks": args.tasks, "seconds": round(time.time() - start, 1)}
    hypotheses = {**{n: scenarios.SCENARIOS[n] for n in learned}, **{s.name: s for s in own.values()}}
    intro = report.scenario_intro_html(distribution, hypotheses)
    page = report.render_zoo(entries, sections, intro)  # rendered before anything is written
    commit_files(args.out, {"zoo.json": dumps(result, indent=2, sort_keys=True) + "\n", "report.html": page})
    console.print(report.zoo_table(entries, title="Scenario zoo: expected against found"))
    if args.seeds > 1:
        for name, d in distribution.items():
            labels = ", ".join(f"{label} ×{n}" for label, n in sorted(d["labels"].items(), key=lambda kv: -kv[1]))
            console.print(f"{name}: expected {d['expected']} on {d['held']}/{d['seeds']} seeds ({labels})")
    console.print(f"{time.time() - start:.0f} s; wrote {args.out / 'zoo.json'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
