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

from lab.io import OneLineParser, write_json_atomic, write_text_atomic

MODEL_FLAGS = ("layers", "looped", "noise", "mask_feature", "pool", "heads")


def parse(argv=None):
    p = OneLineParser(prog="icl.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, help="attention layers of a single model (default suite otherwise)")
    p.add_argument("--context", type=int, default=10, help="in-context examples N (default 10)")
    p.add_argument("--dim", type=int, default=10, help="input dimension d (default 10)")
    p.add_argument("--looped", action="store_true", help="one weight pair reused by every layer")
    p.add_argument("--noise", type=float, help="label noise σ (the prior scale τ is 1)")
    p.add_argument("--mask-feature", action="store_true", help="the last feature's teacher weight is 0 in training")
    p.add_argument("--pool", type=int, help="train on a finite pool of M teachers")
    p.add_argument("--heads", type=int, help="softmax attention with this many heads instead of linear")
    p.add_argument("--steps", type=int, help="meta-training steps of a single model")
    p.add_argument("--eval-tasks", type=int, help="held-out tasks of a single model's summary (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and audit (default 0)")
    p.add_argument("--quick", action="store_true", help="shorter training")
    p.add_argument("--resume", action="store_true", help="continue the single model's run folder OUT")
    p.add_argument("--out", type=Path, required=True,
                   help="a single model's run folder, or the suite's folder for runs/, icl.json and report.html")
    args = p.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be at least 1")
    if args.context < 1 or args.dim < 1:
        p.error("--context and --dim must be at least 1")
    if args.noise is not None and not args.noise >= 0:
        p.error("--noise must be a non-negative number")
    if args.pool is not None and args.pool < 1:
        p.error("--pool must be at least 1")
    if args.heads is not None and args.heads < 1:
        p.error("--heads must be at least 1")
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


def main(argv=None) -> int:
    args = parse(argv)
    from rich.console import Console

    from lab.runs import RunError
    from lab.incontext.train import train_run
    from probes import report
    from probes.zoo import incontext

    console = Console(stderr=True)
    start = time.perf_counter()
    try:
        if any(getattr(args, f) not in (None, False) for f in MODEL_FLAGS):
            model = single_model(args)
            family = model.config.family_obj()
            k_track = incontext.tracking_key(model.config)
            summary = train_run(model.config, args.out, resume=args.resume,
                                on_eval=incontext.tracker(family, model.config.model.layers, k_track),
                                on_chunk=lambda step, line: console.print(
                                    f"step {step}: loss {line['loss']:.4f}"))
            print(f"{model.name}: held-out query loss {summary['eval']['loss']:.4f} (one optimal GD step: "
                  f"{summary['eval']['gd1_optimal_loss']:.4f}); wrote the run folder {args.out} in "
                  f"{time.perf_counter() - start:.0f}s; audit it with python scripts/probe.py --optimizer "
                  f"{args.out} --out REPORT")
            return 0
        models = [dataclasses.replace(m, config=dataclasses.replace(
            m.config, train=dataclasses.replace(m.config.train, steps=args.steps))) if args.steps else m
            for m in incontext.suite(args.quick, context=args.context, dim=args.dim, seed=args.seed)]
        args.out.mkdir(parents=True, exist_ok=True)
        results = []
        for m in models:
            run, summary, reused = incontext.train_model(m, args.out)
            verdict, subject = incontext.audit_run(run, args.seed)
            entry = incontext.entry(m, verdict, summary, run, reused)
            console.print(f"{'✓' if entry.correct else '✗'} {m.name}: {entry.label} / {entry.pursued}"
                          f"{' (reused run)' if reused else ''}")
            results.append((entry, verdict, report.subject_traces(subject)))
        entries = [e for e, _, _ in results]
        sections = [report.zoo_entry_html(e, v, t) for e, v, t in results]
        page = report.render_zoo(entries, sections)
        write_json_atomic(args.out / "icl.json", {"entries": [e.to_json() for e in entries], "seed": args.seed,
                                                  "quick": args.quick,
                                                  "wall_seconds": round(time.perf_counter() - start, 1)})
        write_text_atomic(args.out / "report.html", page)
    except (ValueError, OSError, RunError) as e:
        print(f"icl.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    console.print(report.zoo_table(entries, title="In-context mesa-optimizers"))
    print(f"wrote {args.out / 'icl.json'} and {args.out / 'report.html'} in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
