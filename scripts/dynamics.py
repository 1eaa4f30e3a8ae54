"""What momentum did a learned optimizer learn? Meta-trains an LSTM and an MLP with momentum features on quadratics
of one condition number, reads their effective momentum and step size with the ``dynamics`` probe (Maheswaranathan
et al. 2021, "Reverse engineering learned optimizers reveals known and novel mechanisms"), and sets them against
heavy-ball momentum tuned by grid on the same tasks and horizon and against Polyak's closed form
β* = ((√κ − 1)/(√κ + 1))².

    python scripts/dynamics.py --out reports/dynamics
    python scripts/dynamics.py --meta-steps 1000 --seed 1 --out reports/dynamics-short

Writes OUT/dynamics.json (every number), OUT/dynamics.png (the figure) and the meta-training runs
OUT/runs/<optimizer>-seed<S>-<config hash> (a second call reuses a finished run and resumes an interrupted one).
The heavy ball is tuned on the meta-objective (the clipped log excess ratio averaged over the horizon, what the
learned optimizers were meta-trained on) on one set of tasks and every optimizer is scored on another.
Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from lab import cli
from lab.io import OneLineParser

FAMILY = "quadratic"
# The LSTM reads only the normalised gradient, its scale and a step count: any momentum it has is in its own state.
# The MLP is stateless but reads the family's default features, momenta at decays 0.5, 0.9 and 0.99 among them.
FEATURES = {"lstm": ("grad", "scale", "step10"), "mlp": None}
LRS = (-2.0, 1.0, 31)        # log10 range and points of the coarse learning-rate grid
BETAS = (0.0, 0.98, 50)      # range and points of the coarse momentum grid
FINE = 21                    # points per axis of the fine grid around the coarse optimum
WITHIN = 0.25                # the tolerance on the learned momentum against the tuned one


def parse(argv=None):
    p = OneLineParser(prog="dynamics.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizers", type=cli.names(tuple(FEATURES), "learned optimizer"), default=list(FEATURES),
                   help=f"learned optimizers to meta-train and probe, comma-separated: {', '.join(FEATURES)}")
    p.add_argument("--meta-steps", type=cli.positive(10 ** 7), default=3000, help="meta-training steps of each")
    p.add_argument("--seed", type=cli.seed, default=0, help="seed of the meta-training runs and of the tasks")
    p.add_argument("--tasks", type=cli.positive(1 << 16), default=128,
                   help="tasks of the heavy-ball grid and, separately, of the held-out scores")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", type=Path, required=True, help="folder for dynamics.json, dynamics.png and runs/")
    args = p.parse_args(argv)
    problem = cli.writable_folder(args.out)
    if problem:
        p.error(f"--out {problem}")
    return args


def _run(kind: str, args, say):
    """The optimizer of a finished meta-training run of ``kind`` in OUT/runs (trained, or resumed, first)."""
    from lab.load import load
    from lab.meta.run import train
    from lab.meta.train import MetaConfig

    config = MetaConfig(family=FAMILY, optimizer=kind, meta_steps=args.meta_steps, seed=args.seed,
                        features=FEATURES[kind])
    digest = hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:10]
    folder = args.out / "runs" / f"{kind}-seed{args.seed}-{digest}"
    if not (folder / "summary.json").is_file():
        resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
        say(f"meta-training {kind} ({args.meta_steps} steps) into {folder}")
        start = time.time()
        train(config, folder, resume=resume)
        say(f"  {time.time() - start:.0f} s")
    optimizer, family, _ = load(folder)
    summary = json.loads((folder / "summary.json").read_text())
    return optimizer, family, folder, summary


def _tune(family, key, tasks):
    """Heavy ball tuned by grid on the meta-objective: a coarse log-lr × β grid, then a fine one around its best.
    Returns (lr, β, the β profile: the best meta-objective over lr for each coarse β, and the grid's best by the
    other criterion, the mean final excess base)."""
    import numpy as np

    from probes.catalogue.dynamics import heavy_ball, scores

    def best(lrs, betas):
        grid = np.array([[a, b] for a in lrs for b in betas])
        meta, excess = scores(family, heavy_ball, key, tasks, grid)
        mean = np.mean(meta.astype(np.float64), 1).reshape(len(lrs), len(betas))
        final = np.mean(excess.astype(np.float64), 1).reshape(len(lrs), len(betas))
        i, j = np.unravel_index(int(np.argmin(mean)), mean.shape)
        fi, fj = np.unravel_index(int(np.argmin(final)), final.shape)
        return i, j, mean, (float(lrs[fi]), float(betas[fj]))

    lrs, betas = np.logspace(*LRS[:2], LRS[2]), np.linspace(*BETAS[:2], BETAS[2])
    i, j, coarse, _ = best(lrs, betas)
    fine_lrs = np.geomspace(lrs[max(i - 1, 0)], lrs[min(i + 1, len(lrs) - 1)], FINE)
    fine_betas = np.linspace(betas[max(j - 1, 0)], betas[min(j + 1, len(betas) - 1)], FINE)
    fi, fj, _, by_final = best(fine_lrs, fine_betas)
    return float(fine_lrs[fi]), float(fine_betas[fj]), {"betas": betas.tolist(), "meta": coarse.min(0).tolist(),
                                                        "lrs": lrs.tolist(), "by_final_excess": by_final}


def _score(family, optimizer, key, tasks) -> dict:
    import numpy as np

    from probes.catalogue.dynamics import scores

    meta, excess = scores(family, optimizer, key, tasks)
    return {"meta_objective": float(np.mean(meta)), "final_excess": float(np.mean(excess.astype(np.float64)))}


def _hb_score(family, lr, beta, key, tasks) -> dict:
    import numpy as np

    from probes.catalogue.dynamics import heavy_ball, scores

    meta, excess = scores(family, heavy_ball, key, tasks, np.array([[lr, beta]]))
    return {"meta_objective": float(np.mean(meta)), "final_excess": float(np.mean(excess.astype(np.float64)))}


def _condition_numbers(family, key, tasks):
    import jax
    import numpy as np

    eig = np.stack([np.linalg.eigvalsh(np.asarray(family.sample(k)["A"])) for k in jax.random.split(key, tasks)])
    return eig[:, -1] / eig[:, 0]


def _figure(result: dict, path: Path) -> None:
    """(a) momentum and (b) step size of each learned optimizer per operating step against the tuned heavy ball
    and Polyak's; (c) the grid's β profile; (d) the impulse responses against the tuned heavy ball's."""
    import numpy as np

    from probes.report import draw

    fig = draw.figure(figsize=(12, 8.5))
    (ax1, ax2), (ax3, ax4) = fig.subplots(2, 2)
    tuned, pol = result["heavy_ball"], result["polyak"]
    colours = {"lstm": draw.PURSUED_COLOUR, "mlp": "#7570b3"}
    for name, entry in result["learned"].items():
        steps = [v["step"] for v in entry["probe"]["per_step"].values()]
        ax1.plot(steps, [v["effective_momentum"] for v in entry["probe"]["per_step"].values()], "o-",
                 color=colours[name], label=f"{name}: effective β (nearest heavy ball)")
        eig = [v["momentum"] for v in entry["probe"]["per_step"].values()]
        if any(e is not None for e in eig):
            ax1.plot(steps, [np.nan if e is None else e for e in eig], "s:", color=colours[name], alpha=0.6,
                     label=f"{name}: slowest pushing eigenvalue")
        ax2.plot(steps, [v["effective_step"] for v in entry["probe"]["per_step"].values()], "o-", color=colours[name],
                 label=f"{name}: effective η")
    for ax, key, what in ((ax1, "beta", "β"), (ax2, "lr", "η")):
        ax.axhline(tuned[key], color=draw.BASE_COLOUR, linestyle="--", label=f"grid-tuned heavy ball {what} "
                   f"{tuned[key]:.3g}")
        ax.axhline(pol[key], color="#1b7837", linestyle=":", label=f"Polyak {what}* {pol[key]:.3g} (κ {pol['condition']:g})")
        ax.set_xlabel("operating step t", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.axhspan(tuned["beta"] * (1 - WITHIN), tuned["beta"] * (1 + WITHIN), color=draw.BASE_COLOUR, alpha=0.08)
    ax1.set_ylabel("momentum β", fontsize=9)
    ax1.set_title("(a) effective momentum", fontsize=10)
    ax2.set_yscale("log")
    ax2.set_ylabel("step per unit gradient η", fontsize=9)
    ax2.set_title("(b) effective step size", fontsize=10)
    prof = result["heavy_ball"]["profile"]
    ax3.plot(prof["betas"], prof["meta"], "o-", color=draw.BASE_COLOUR, ms=3)
    ax3.axvline(tuned["beta"], color=draw.BASE_COLOUR, linestyle="--", label="tuned β")
    ax3.axvline(pol["beta"], color="#1b7837", linestyle=":", label="Polyak β*")
    ax3.axhline(tuned["score"]["meta_objective"], color=draw.BASE_COLOUR, linewidth=0.8, alpha=0.6)
    for name, entry in result["learned"].items():
        ax3.axvline(entry["probe"]["effective_momentum"], color=colours[name], label=f"{name} effective β")
        ax3.axhline(entry["score"]["meta_objective"], color=colours[name], linewidth=0.8, alpha=0.6)
    ax3.set_xlabel("β", fontsize=9)
    ax3.set_ylabel("meta-objective, best over lr (lower is better)", fontsize=9)
    ax3.set_title("(c) heavy ball on the tuning grid; horizontal lines: scores on held-out tasks", fontsize=10)
    ax3.grid(alpha=0.3)
    ax3.legend(fontsize=7)
    k = np.arange(len(next(iter(result["learned"].values()))["probe"]["response"])) if result["learned"] else []
    ax4.plot(k, tuned["lr"] * tuned["beta"] ** np.asarray(k), "--", color=draw.BASE_COLOUR, label="tuned heavy ball")
    for name, entry in result["learned"].items():
        ax4.plot(k, np.abs(entry["probe"]["response"]), "o", ms=3, color=colours[name],
                 label=f"{name} (median over operating points)")
    ax4.set_yscale("log")
    ax4.set_xlabel("lag k", fontsize=9)
    ax4.set_ylabel("|step response to a unit gradient impulse|", fontsize=9)
    ax4.set_title("(d) impulse responses", fontsize=10)
    ax4.grid(alpha=0.3)
    ax4.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    args = parse(argv)
    import jax
    import numpy as np

    from lab import families
    from lab.io import write_json_atomic
    from probes.catalogue.dynamics import dynamics, heavy_ball, polyak
    from probes.subject import Subject

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    started = time.time()
    family = families.make(FAMILY)
    key = jax.random.fold_in(jax.random.key(args.seed), 14)
    k_tune, k_test, k_probe, k_kappa = jax.random.split(key, 4)

    say("tuning heavy ball by grid on the meta-objective")
    lr, beta, profile = _tune(family, k_tune, args.tasks)
    alpha_star, beta_star = polyak(family.condition, family.scale)
    kappa = _condition_numbers(family, k_kappa, args.tasks)
    median_kappa = float(np.median(kappa))
    tuned_opt = heavy_ball((lr, beta))
    tuned_probe = dynamics(Subject(tuned_opt, family, k_probe, tasks=8))
    result = {
        "family": FAMILY, "condition": family.condition, "dim": family.dim, "horizon": family.horizon,
        "task_condition_median": median_kappa, "seed": args.seed, "tasks": args.tasks, "meta_steps": args.meta_steps,
        "heavy_ball": {"lr": lr, "beta": beta, "profile": profile,
                       "score": _hb_score(family, lr, beta, k_test, args.tasks),
                       "probe": {"momentum": tuned_probe.momentum, "effective_momentum": tuned_probe.effective_momentum,
                                 "effective_step": tuned_probe.effective_step}},
        "polyak": {"condition": family.condition, "lr": alpha_star, "beta": beta_star,
                   "beta_at_task_median_condition": polyak(median_kappa, family.scale)[1],
                   "score": _hb_score(family, alpha_star, beta_star, k_test, args.tasks)},
        "learned": {},
    }
    say(f"  tuned heavy ball lr {lr:.3g}, β {beta:.3g}; Polyak α* {alpha_star:.3g}, β* {beta_star:.3g}")
    for kind in args.optimizers:
        optimizer, fam, folder, summary = _run(kind, args, say)
        report = dynamics(Subject(optimizer, fam, k_probe, tasks=8))
        probe = report.to_json()
        for bulky in ("sweep_norms", "sweep_updates", "spectrum"):
            probe.pop(bulky)
        eff = report.effective_momentum
        result["learned"][kind] = {
            "run": str(folder), "features": list(FEATURES[kind] or ["default"]), "eval": summary["eval"],
            "score": _score(family, optimizer, k_test, args.tasks), "probe": probe, "summary": report.summary("loss"),
            "momentum_vs_tuned": eff / beta - 1 if beta > 0 else None,
            "momentum_within_25pct": bool(beta > 0 and abs(eff / beta - 1) <= WITHIN),
            "momentum_vs_polyak": eff / beta_star - 1,
        }
        say(f"  {kind}: {report.summary('loss')}")
    result["wall_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "dynamics.json", result)
    _figure(result, args.out / "dynamics.png")
    say(f"wrote {args.out / 'dynamics.json'} and {args.out / 'dynamics.png'} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
