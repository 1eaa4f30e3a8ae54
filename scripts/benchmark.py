"""The verdict's error rates on drawn ground-truth cases it was never tuned on (README, "Measuring the verdict").

    python scripts/benchmark.py --split test --cases 300 --seed 6 --out bench/test
    python scripts/benchmark.py --split calibration --cases 300 --seed 1 --out bench/calibration1

Draws N cases of the split (``probes.zoo.cases``: a random world and an optimizer from the grammar, each with the
class and pursued quantity its construction settles), audits each in worker processes, and writes
OUT/benchmark.json ({"cases", "accuracy", "macro_f1", "per_class", "confusion", "abstained",
"false_robust_rate", "calibration", "entries", ...}), OUT/report.html (confusion matrix, reliability diagram,
every case) and OUT/reports.pkl (every case's probe reports, what the calibration fit reads) as one commit. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

from lab import cli

SPLITS = ("calibration", "test")  # probes.zoo.cases.SPLITS, repeated so --help needs no jax import
# Cases share their programs by world structure (probes.zoo.cases.draw_world) and a worker takes the cases of one
# structure in turn, so it compiles each once; a fresh worker after this many cases bounds its memory (a worker
# holds 3 to 5 GB of compiled programs after 30 cases; with 100, two workers and a test run beside them ran a
# 23 GB machine out of memory).
CASES_PER_WORKER = 30


def parse(argv=None):
    p = cli.Parser(prog="benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=SPLITS, required=True,
                   help="calibration: the cases thresholds and confidence are fitted on; test: never looked at while "
                        "tuning")
    p.add_argument("--cases", type=cli.positive(100_000), default=100, help="cases to draw and audit")
    p.add_argument("--seed", type=cli.seed, default=0, help="the split's seed (cases are drawn from split, seed, index)")
    p.add_argument("--tasks", type=cli.positive(1 << 16), default=32, help="tasks per audit rollout")
    p.add_argument("--jobs", type=cli.positive(256),
                   help="worker processes (default: one per CPU core up to 4; 1 on a GPU)")
    p.add_argument("--out", type=Path, required=True, help="folder for benchmark.json and report.html")
    args = p.parse_args(argv)
    problem = cli.writable_folder(args.out)
    if problem:
        p.error(f"--out {problem}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from lab import runs
    from probes.zoo.workers import WorkerDied

    try:
        with runs.lock_report(args.out):  # one writer per folder; a second is refused in one line
            args.out.mkdir(parents=True, exist_ok=True)
            return _run(args)
    except OSError as e:
        print(f"benchmark.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except WorkerDied as e:  # not bad input: exit 1; the folder's files are as they were
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from rich.markup import escape

    from lab.io import commit_files, dumps, recover_commits
    from probes import report
    from probes.zoo import cases
    from probes.zoo import jobs as zoo, workers as pool
    from probes.zoo.score import calibration_error, score

    recover_commits(args.out)
    console = report.log_console()
    start = time.time()
    names = [f"{args.split}-{args.seed}-{i}" for i in range(args.cases)]
    workers = args.jobs or pool.default_workers()
    console.print(f"{len(names)} {args.split} cases (seed {args.seed}) on {workers} worker "
                  f"process{'es' if workers > 1 else ''}")
    bars = report.progress(console=console)
    bar = bars.add_task(f"{args.split} cases", total=len(names))

    def done(i, result):
        e = result[0]
        tail = "" if e.correct else f" (expected {e.expected} / {e.expected_pursued})"
        console.print(f"{'✓' if e.correct else '✗'} {e.name}: {e.label} / {e.pursued}{tail} "
                      f"({escape(e.details['description'])})")
        bars.advance(bar)

    with bars:  # cases of one world structure to one worker, which compiles its programs once
        results = pool.run_jobs([(zoo.case_job, (name, args.tasks)) for name in names], workers, done,
                               jobs_per_worker=CASES_PER_WORKER, groups=[cases.likely_structure(n) for n in names])
    entries = [entry for entry, _, _ in results]
    # Every case's reports, the input of the calibration fit (probes.calibration), which re-reads them.
    kept = pickle.dumps({e.name: {k: r for k, r in v.reports.items()} for e, v, _ in results})
    result = {**score(entries), "split": args.split, "seed": args.seed, "tasks": args.tasks,
              "seconds": round(time.time() - start, 1), "entries": [e.to_json() for e in entries]}
    page = report.render_benchmark(result, entries)  # rendered before anything is written
    commit_files(args.out, {"benchmark.json": dumps(result, indent=2, sort_keys=True) + "\n", "report.html": page,
                            "reports.pkl": kept})
    console.print(report.zoo_table(entries, title=f"Verdict benchmark: {args.split} split"))
    console.print(f"accuracy {result['accuracy']:.3f} (class {result['class_accuracy']:.3f}), macro-F1 "
                  f"{result['macro_f1']:.3f}, abstained {result['abstained']}, false-robust rate "
                  f"{result['false_robust_rate']:.3f}, largest calibration gap {calibration_error(result['calibration']):.2f}")
    console.print(f"{time.time() - start:.0f} s; wrote {args.out / 'benchmark.json'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
