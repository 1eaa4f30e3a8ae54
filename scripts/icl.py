"""In-context mesa-optimizers: meta-train attention models on in-context linear regression into run folders,
and audit which inner objective each pursues (von Oswald et al. 2022).

    python scripts/icl.py --layers 1 --context 10 --out runs/lsa1         # one model: a run folder
    python scripts/probe.py --optimizer runs/lsa1 --out reports/lsa1      # ... audited like any optimizer
    python scripts/icl.py --layers 2 --looped --out runs/looped
    python scripts/icl.py --mask-feature --out runs/masked                # also --pool M, --noise σ
    python scripts/icl.py --quick --out reports/icl                       # the suite, trained and audited

With a model flag it trains that one model into OUT, a run folder (config.json, metrics.jsonl, checkpoints/,
summary.json; --resume continues it). With none it runs the suite (1-layer LSA, looped 2-layer LSA, masked
feature, small pool, noisy): OUT/runs/ (reused by a second call), OUT/icl.json ({"entries": [...]}) and
OUT/report.html. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from lab import cli
from lab.io import OneLineParser

MODEL_FLAGS = ("layers", "looped", "noise", "mask_feature", "pool", "heads")


def parse(argv=None):
    p = OneLineParser(prog="icl.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=cli.positive(64),
                   help="attention layers of a single model (default: the suite of five models)")
    p.add_argument("--context", type=cli.positive(1 << 20), default=10, help="in-context examples N")
    p.add_argument("--dim", type=cli.positive(1 << 16), default=10, help="input dimension d")
    p.add_argument("--looped", action="store_true", help="one weight pair reused by every layer")
    p.add_argument("--noise", type=cli.real(0), help="label noise σ, finite and ≥ 0 (the prior scale τ is 1; "
                   "default: none)")
    p.add_argument("--mask-feature", action="store_true", help="the last feature's teacher weight is 0 in training")
    p.add_argument("--pool", type=cli.positive(1 << 20), help="train on a finite pool of M teachers (default: "
                   "fresh teachers)")
    p.add_argument("--heads", type=cli.positive(256), help="softmax attention with this many heads instead of "
                   "linear (default: linear)")
    p.add_argument("--steps", type=cli.positive(10 ** 8), help="meta-training steps of a single model (default: "
                   "3000, 5000 with more layers; less under --quick)")
    p.add_argument("--eval-tasks", type=cli.positive(1 << 24), help="held-out tasks of a single model's summary "
                   "(default 4096)")
    p.add_argument("--seed", type=cli.seed, default=0, help="seed of training and audit")
    p.add_argument("--quick", action="store_true", help="shorter training")
    p.add_argument("--resume", action="store_true", help="continue the single model's run folder OUT")
    p.add_argument("--out", type=Path, required=True,
                   help="a single model's run folder, or the suite's folder for runs/, icl.json and report.html")
    args = p.parse_args(argv)
    if args.heads is not None and args.looped:
        p.error("--looped applies to linear self-attention only (drop --heads)")
    if args.mask_feature and args.dim < 2:
        p.error("--mask-feature needs --dim of at least 2")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.eval_tasks is not None and args.eval_tasks < 16:
        p.error("--eval-tasks must be at least 16")
    if args.looped and (args.layers or 1) < 2:
        p.error("--looped needs --layers of at least 2")
    problem = cli.writable_folder(args.out)
    if problem:
        p.error(f"--out {problem}")
    # Attention holds a (context+1)² score matrix per task and head, and training keeps every layer's for the
    # backward pass: refuse a size that cannot fit before compiling it (it would end in an out-of-memory crash).
    layers = args.layers or 2
    tokens, width = args.context + 1, args.dim + 1
    batch = max(1024, args.eval_tasks or 4096)
    estimate = 4 * batch * layers * ((args.heads or 1) * tokens ** 2 + 8 * tokens * width) * 6
    problem = cli.check_memory(estimate, f"--context {args.context} with --dim {args.dim} and {batch} tasks a batch")
    if problem:
        p.error(problem)
    return args


def single_model(args):
    """The ``SuiteModel`` the model flags describe."""
    from lab.incontext.models import ModelSpec
    from lab.incontext.train import InContextConfig, TrainConfig
    from probes.zoo.incontext import SuiteModel

    layers = args.layers or (2 if args.looped else 1)
    family = {"dim": args.dim, "context": args.context}
    if args.noise:
        family["noise"] = args.noise
    if args.mask_feature:
        family["masked"] = args.dim - 1
    if args.pool:
        family["pool"] = args.pool
    spec = ModelSpec("softmax" if args.heads else "lsa", layers, args.looped, args.heads or 4)
    deep = layers > 1
    steps = args.steps or ((2500 if deep else 1500) if args.quick else (5000 if deep else 3000))
    train = TrainConfig(steps=steps, batch=512 if args.quick else 1024,
                        lr=(1e-2 if args.quick else 5e-3) if deep else 4e-3)
    config = InContextConfig(spec, family, train, args.seed, args.eval_tasks or 4096)
    proxy = args.mask_feature or bool(args.pool)
    expected_pursued = "ls_masked" if args.mask_feature else "pool_posterior" if args.pool else None
    name = "_".join([f"{spec.kind}{layers}"] + (["looped"] if args.looped else []) + (["masked"] if args.mask_feature
                    else []) + ([f"pool{args.pool}"] if args.pool else []) + ([f"noise{args.noise:g}"] if args.noise
                                                                          else []))
    return SuiteModel(name, config, "proxy_general" if proxy else "approximate", expected_pursued)


def _suite(args, models, console, start: float) -> list:
    """Trains (or reuses) and audits every suite model under ``args.out`` with a bar over the models, then
    writes ``icl.json`` and ``report.html`` as one commit (``lab.io.commit_files``); returns the entries."""
    from lab.io import commit_files, dumps
    from probes import report
    from probes.zoo import incontext

    results = []
    with report.progress(console=console) as bars:
        bar = bars.add_task("in-context suite (train or reuse, then audit)", total=len(models))
        for m in models:
            bars.update(bar, description=f"{m.name}: training or reusing, then auditing")
            run, summary, reused = incontext.train_model(m, args.out)
            verdict, subject = incontext.audit_run(run, args.seed)
            entry = incontext.entry(m, verdict, summary, run, reused)
            console.print(f"{'✓' if entry.correct else '✗'} {m.name}: {entry.label} / {entry.pursued}"
                          f"{' (reused run)' if reused else ''}")
            results.append((entry, verdict, report.subject_traces(subject)))
            bars.advance(bar)
    entries = [e for e, _, _ in results]
    sections = [report.zoo_entry_html(e, v, t) for e, v, t in results]
    page = report.render_zoo(entries, sections)
    record = {"entries": [e.to_json() for e in entries], "seed": args.seed, "quick": args.quick,
              "wall_seconds": round(time.perf_counter() - start, 1)}
    commit_files(args.out, {"icl.json": dumps(record, indent=2, sort_keys=True) + "\n", "report.html": page})
    return entries


def main(argv=None) -> int:
    args = parse(argv)
    from lab import runs
    from lab.io import recover_commits
    from lab.runs import RunError
    from lab.incontext.train import train_run
    from probes import report
    from probes.zoo import incontext

    console = report.log_console(stderr=True)  # log lines unwrapped when stderr is a file
    start = time.perf_counter()
    try:
        if any(getattr(args, f) not in (None, False) for f in MODEL_FLAGS):
            model = single_model(args)
            family = model.config.family_obj()
            k_track = incontext.tracking_key(model.config)
            with report.progress(console=console) as bars:
                bar = bars.add_task(f"compiling {model.name}", total=model.config.train.steps)
                console.print(f"training {model.name}: compiling the first chunk of steps, then a line per chunk")

                def on_chunk(step, line):
                    console.print(f"step {step}: loss {line['loss']:.4f}")
                    bars.update(bar, completed=step, description=f"training {model.name}")

                summary = train_run(model.config, args.out, resume=args.resume,
                                    on_eval=incontext.tracker(family, model.config.model.layers, k_track),
                                    on_chunk=on_chunk)
            print(f"{model.name}: held-out query loss {summary['eval']['loss']:.4f} (one optimal GD step: "
                  f"{summary['eval']['gd1_optimal_loss']:.4f}); wrote the run folder {args.out} in "
                  f"{time.perf_counter() - start:.0f}s; audit it with python scripts/probe.py --optimizer "
                  f"{args.out} --out REPORT")
            return 0
        models = [dataclasses.replace(m, config=dataclasses.replace(
            m.config, train=dataclasses.replace(m.config.train, steps=args.steps))) if args.steps else m
            for m in incontext.suite(args.quick, context=args.context, dim=args.dim, seed=args.seed)]
        with runs.lock_report(args.out):  # one suite writer per folder for its whole run
            args.out.mkdir(parents=True, exist_ok=True)
            recover_commits(args.out)  # finish, or drop, the report a killed writer was committing
            entries = _suite(args, models, console, start)
    except (ValueError, OSError, RunError) as e:
        print(f"icl.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    console.print(report.zoo_table(entries, title="In-context mesa-optimizers"))
    print(f"wrote {args.out / 'icl.json'} and {args.out / 'report.html'} in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
