"""In-context mesa-optimizers: meta-train attention models on in-context linear regression, audit which inner
objective each pursues against closed-form reference learners (von Oswald et al. 2022).

    python scripts/icl.py --quick --out reports/icl                      # the small suite, about 2 minutes
    python scripts/icl.py --layers 1 --context 10 --out reports/icl_lsa1
    python scripts/icl.py --layers 2 --looped --out reports/icl_looped
    python scripts/icl.py --mask-feature --out reports/icl_masked        # also --pool M, --noise σ

With no model flag it runs the suite (1-layer LSA, looped 2-layer LSA, masked feature, small pool, noisy).
Writes OUT/icl.json ({"entries": [one per model], ...}) and OUT/report.html. Bad input ends with a one-line
error and exit code 2.
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
    p.add_argument("--eval-tasks", type=int, help="tasks per evaluation (default 2048 quick, 10000 otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="shorter training (the suite in about 2 minutes)")
    p.add_argument("--out", type=Path, required=True, help="folder for icl.json and report.html")
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
    from lab.incontext import ICLFamily, ModelSpec, TrainConfig
    from probes.catalogue.incontext import SuiteModel

    layers = args.layers or (2 if args.looped else 1)
    family = ICLFamily(dim=args.dim, context=args.context, noise=args.noise or 0.0,
                       masked=args.dim - 1 if args.mask_feature else None, pool=args.pool or 0)
    spec = ModelSpec("softmax" if args.heads else "lsa", layers, args.looped, args.heads or 4)
    deep = layers > 1
    steps = args.steps or ((2500 if deep else 1500) if args.quick else (5000 if deep else 3000))
    config = TrainConfig(steps=steps, batch=512 if args.quick else 1024,
                         lr=(1e-2 if args.quick else 5e-3) if deep else 4e-3)
    proxy = args.mask_feature or bool(args.pool)
    expected_pursued = "ls_masked" if args.mask_feature else "pool_posterior" if args.pool else None
    name = "_".join([f"{spec.kind}{layers}"] + (["looped"] if args.looped else []) + (["masked"] if args.mask_feature
                    else []) + ([f"pool{args.pool}"] if args.pool else []) + ([f"noise{args.noise:g}"] if args.noise
                                                                          else []))
    return SuiteModel(name, spec, family, config, "proxy_general" if proxy else "approximate", expected_pursued)


def main(argv=None) -> int:
    args = parse(argv)
    from rich.console import Console

    from probes.catalogue import incontext

    console = Console(stderr=True)
    start = time.perf_counter()
    try:
        if any(getattr(args, f) not in (None, False) for f in MODEL_FLAGS):
            models = [single_model(args)]
        else:
            models = [dataclasses.replace(m, config=dataclasses.replace(m.config, steps=args.steps)) if args.steps
                      else m for m in incontext.suite(args.quick, context=args.context, dim=args.dim)]
        args.out.mkdir(parents=True, exist_ok=True)
        n_eval = args.eval_tasks or (2048 if args.quick else 10000)
        results = [incontext.run_model(m, args.seed, n_eval, log=console.print) for m in models]
        entries = [r[0] for r in results]
        page = incontext.render_page(entries, [r[2] for r in results], "In-context mesa-optimizers")
        write_json_atomic(args.out / "icl.json", {"entries": entries, "seed": args.seed, "quick": args.quick,
                                                  "wall_seconds": round(time.perf_counter() - start, 1)})
        write_text_atomic(args.out / "report.html", page)
    except (ValueError, OSError) as e:
        print(f"icl.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for e in entries:
        ok = "✓" if e["label"] == e["expected"] else "✗"
        print(f"{ok} {e['name']}: {e['label']} / {e['pursued']} (expected {e['expected']}); loss {e['loss']:.4f}, "
              f"{e['reference']} {e['reference_loss']:.4f}, cos {e['model_cos']:.4f}")
    print(f"wrote {args.out / 'icl.json'} and {args.out / 'report.html'} in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
