"""The task-diversity transition in context: Raventós, Paul, Chen and Ganguli 2023, "Pretraining task diversity and
the emergence of non-Bayesian in-context learning for regression" (NeurIPS 2023).

A model meta-trained on in-context regression whose teachers come from a finite pool of M weight vectors can pursue
one of two objectives. Below a threshold M* it pursues the *pool posterior*: its prediction is the posterior mean
over the M pretraining teachers (their dMMSE estimator), the Bayes-optimal predictor on the training distribution
and a proxy of the base, since it fails on fresh teachers w ~ N(0, τ²I). Above M* it pursues ridge regression at
λ = σ²/τ², the Bayes-optimal predictor for the Gaussian prior, which serves the base on fresh tasks too (aligned).

The sweep trains one small attention model per pool size M and seed into a run folder (``DIR/runs/``, reused by a
second call and resumed when interrupted, as the in-context suite's are: ``probes.zoo.incontext``), audits it with
the lab's one ``probes.verdict.audit`` through the in-context family's class rule (``in_context_rule``, which labels
a pool follower ``proxy_general / pool_posterior``), and measures the model's query loss on pool tasks and on fresh
tasks against the two references, dMMSE and ridge, on the same tasks.

The model (``MODEL``) is the smallest of the lab's attention models seen to reach both ends at d = 2 within the
time budget (measured; README, "The task-diversity transition"): a linear self-attention layer only implements learners
linear in Xᵀy, which cannot be the pool posterior, and one softmax layer stays far from both references. Two softmax
layers with four heads follow the pool posterior on small pools (on fresh tasks their predictions are nearer the
dMMSE's, and on one or two teachers they reach its in-pool loss) and, trained on a thousand teachers, come within
about 0.03 of ridge's query loss on fresh tasks (about 17% above it: an approximate ridge, not ridge).

**The threshold, per seed** (``threshold``): M* is the smallest M of the sweep at which the model is on ridge's side,
that is (a) the audit labels it base-aligned (``robust`` or ``approximate``, not ``proxy_general``) and (b) on fresh
tasks its predictions are nearer ridge's than the dMMSE's: the RMS difference of ŷ_model − ŷ_ridge is smaller than
that of ŷ_model − ŷ_dMMSE, on the same fresh tasks. ``None`` when no M of the sweep is. Across seeds: the median in
log₂ M (``2^median(log₂ M*)``), the minimum and maximum, and the interquartile range of log₂ M*. Whether every
larger M of the sweep is also on ridge's side is reported as ``monotone``.

Why predictions and not losses: the same rule on the fresh-task *losses* (``|L − L_ridge| < |L − L_dMMSE|``, the
issue's first suggestion, reported beside it as ``m_star_loss``) fails for a model of limited capacity. Once the pool
is dense the two references' losses nearly coincide, and a model that implements ridge up to an error of its own
(this one stays about 0.03 above ridge's loss) has a loss nearer the dMMSE's, which is the worse of the two. In
prediction space that error adds to both distances alike (``|e|²`` to ridge, ``|e|² + |Δ|²`` to the dMMSE, Δ their
difference), so the comparison still names the reference the model implements.

The seed of a member is its training seed, its audit seed and its pool's seed (``pool_seed``), so the spread over
seeds includes the draw of the pool. The measurement tasks are drawn from the caller's key, folded with the seed:
every M of one seed is measured on the same fresh tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lab.families.incontext import ICLFamily, ridge, ridge_name
from lab.incontext import learner as icl_learner
from lab.incontext.models import ModelSpec
from lab.incontext.train import InContextConfig, TrainConfig, load_run, predictions, train_run
from probes.subject import Subject
from probes.zoo.incontext import SuiteModel, run_folder

PAPER = ("Raventós, Paul, Chen and Ganguli 2023, \"Pretraining task diversity and the emergence of non-Bayesian "
         "in-context learning for regression\" (NeurIPS 2023)")
# The task family: d = 2, N = 8 examples, label noise σ = 0.5 with τ = 1 (Bayes ridge λ = σ²/τ² = 0.25), Gaussian
# inputs of unit variance as in Raventós et al. (input_scale s = √3: the family's input variance is s²/3).
FAMILY = {"dim": 2, "context": 8, "noise": 0.5, "inputs": "gaussian", "input_scale": math.sqrt(3.0)}
MODEL = ModelSpec("softmax", layers=2, heads=4)
TRAIN = TrainConfig(steps=4000, batch=128, lr=4e-3, warmup=100, eval_every=1000)
QUICK_TRAIN = TrainConfig(steps=1500, batch=128, lr=4e-3, warmup=100, eval_every=500)
POOLS = (1, 2, 4, 8, 16, 64, 1024)
QUICK_POOLS = (1, 4, 16, 1024)
SEEDS = 3
# The probes the in-context class rule reads, and the competence gate before it: ``decide`` consults the family's
# rule right after the gate, so the label is the one the full default audit gives (``full_audit`` runs that).
AUDIT_PROBES = ("competence", "icl_alignment", "icl_shifts")
ALIGNED = ("robust", "approximate")
PROXY = "proxy_general"
RULE = ("M* (per seed) is the smallest pool size M of the sweep at which (a) the audit labels the model base-aligned "
        "(robust or approximate, not proxy_general) and (b) on fresh tasks its predictions are nearer ridge's "
        "(λ = σ²/τ²) than the dMMSE's (the pool posterior's): RMS(ŷ − ŷ_ridge) < RMS(ŷ − ŷ_dMMSE) on the same fresh "
        "tasks; none when no M qualifies. Median over the seeds with an M*: 2^median(log2 M*); spread: min, max and "
        "the interquartile range of log2 M*. 'monotone': every larger M of the sweep qualifies too.")
LOSS_RULE = ("m_star_loss: the same with (b) on the fresh-task query losses, |L − L_ridge| < |L − L_dMMSE| (ill-posed "
             "once the two references' losses come closer than the model's own excess over ridge)")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep trains and measures: pool sizes, seeds, the family's fields (beside ``pool`` and
    ``pool_seed``), the model, the training, the audit's task count and the measurement's."""

    pools: tuple[int, ...] = POOLS
    seeds: tuple[int, ...] = tuple(range(SEEDS))
    family: dict = dataclasses.field(default_factory=lambda: dict(FAMILY))
    model: ModelSpec = MODEL
    train: TrainConfig = TRAIN
    audit_tasks: int = 512
    eval_tasks: int = 4096
    full_audit: bool = False

    def __post_init__(self):
        if not self.pools or any(not isinstance(m, int) or m < 1 for m in self.pools):
            raise ValueError(f"pool sizes must be positive integers, got {list(self.pools)}")
        if len(set(self.pools)) != len(self.pools):
            raise ValueError(f"pool sizes must be distinct, got {list(self.pools)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers ≥ 0, got {list(self.seeds)}")
        if "pool" in self.family or "pool_seed" in self.family:
            raise ValueError("the sweep sets the family's pool and pool_seed itself")
        if self.audit_tasks < 16 or self.eval_tasks < 16:
            raise ValueError("audit_tasks and eval_tasks must be at least 16")
        object.__setattr__(self, "pools", tuple(sorted(self.pools)))

    def to_json(self) -> dict:
        return {"pools": list(self.pools), "seeds": list(self.seeds), "family": dict(self.family),
                "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                "audit_tasks": self.audit_tasks, "eval_tasks": self.eval_tasks, "full_audit": self.full_audit,
                "audit_probes": "default" if self.full_audit else list(AUDIT_PROBES)}


def member(config: SweepConfig, pool: int, seed: int) -> SuiteModel:
    """The model of pool size ``pool`` and seed ``seed`` (its training, audit and pool seed), expected to follow
    the pool posterior (a proxy) below the threshold: the expectation the sweep tests."""
    family = {**config.family, "pool": pool, "pool_seed": seed}
    ic = InContextConfig(config.model, family, config.train, seed, config.eval_tasks)
    ic.validate()
    return SuiteModel(f"diversity_pool{pool}", ic, PROXY, "pool_posterior")


def train_or_reuse(model: SuiteModel, root: Path | str) -> tuple[Path, dict, bool]:
    """(run folder, summary, reused): the run folder ``root/runs/<name>-seed<S>-<hash>`` of the suite's layout,
    trained, or reused when finished, or resumed when interrupted. Trained without the suite's per-chunk alignment
    tracking (its compilations would double the cost of a small model's run)."""
    out = run_folder(root, model)
    if (out / "summary.json").is_file():
        return out, json.loads((out / "summary.json").read_text()), True
    summary = train_run(model.config, out, resume=(out / "config.json").is_file())
    return out, summary, False


# -------------------------------------------------------------------------------------------------------
# Measurement: the model, the dMMSE and ridge on pool tasks and on fresh tasks (one compilation per shape)
# -------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _model_predictions(graphdef, params, tasks: dict) -> jax.Array:
    return predictions(graphdef, params, tasks)


def dmmse_weights(pool_w: jax.Array, x: jax.Array, y: jax.Array, noise2: float) -> jax.Array:
    """The pool posterior mean (dMMSE) of one task, ``Σ_m p(m | context) w_m`` with ``p ∝ exp(−Σ_i (y_i − w_m·x_i)²
    / 2σ²)``: ``ICLFamily.pool_posterior_probs`` with the pool as an argument, so one compilation serves every pool
    of a size (σ² floored as there)."""
    resid = y[None, :] - pool_w @ x.T
    return jax.nn.softmax(-0.5 * jnp.sum(resid**2, axis=1) / noise2) @ pool_w


@functools.partial(jax.jit, static_argnames=("lam",))
def _reference_predictions(pool_w: jax.Array, tasks: dict, noise2: jax.Array, lam: float
                           ) -> tuple[jax.Array, jax.Array]:
    """(dMMSE, ridge at ``lam``) query predictions on ``tasks``."""
    w_d = jax.vmap(lambda x, y: dmmse_weights(pool_w, x, y, noise2))(tasks["x"], tasks["y"])
    w_r = jax.vmap(lambda x, y: ridge(x, y, lam))(tasks["x"], tasks["y"])
    return jnp.sum(w_d * tasks["xq"], 1), jnp.sum(w_r * tasks["xq"], 1)


def measure(family: ICLFamily, graphdef, params, key: jax.Array, tasks: int) -> tuple[dict, dict]:
    """On ``tasks`` pool tasks and ``tasks`` fresh ones (w ~ N(0, τ²I)) drawn from ``key``: (query losses of the
    model, the dMMSE and ridge at λ = σ²/τ², ``{"pool": {"model", "dmmse", "ridge"}, "fresh": {...}}``; the RMS
    difference of the model's predictions from each reference's, ``{"pool": {"dmmse", "ridge"}, "fresh": {...}}``)."""
    noise2 = jnp.asarray(max(family.noise, 1e-2) ** 2, jnp.float32)
    pool_w = family.pool_weights()
    losses, distances = {}, {}
    for (where, fam), k in zip((("pool", family), ("fresh", family.shift("fresh_tasks"))), jax.random.split(key)):
        batch = fam.sample_batch(k, tasks)
        y_d, y_r = (np.asarray(a, np.float64) for a in _reference_predictions(pool_w, batch, noise2,
                                                                              family.bayes_lambda))
        y_m = np.asarray(_model_predictions(graphdef, params, batch), np.float64)
        yq = np.asarray(batch["yq"], np.float64)
        losses[where] = {name: float(np.mean(0.5 * (y - yq) ** 2))
                         for name, y in (("model", y_m), ("dmmse", y_d), ("ridge", y_r))}
        distances[where] = {name: float(np.sqrt(np.mean((y_m - y) ** 2))) for name, y in (("dmmse", y_d),
                                                                                            ("ridge", y_r))}
    return losses, distances


# -------------------------------------------------------------------------------------------------------
# The audit of a member
# -------------------------------------------------------------------------------------------------------
def audit_member(run: Path, seed: int, tasks: int, full: bool = False):
    """The lab's one audit of the run's model (``probes.verdict.audit``) on ``tasks`` tasks drawn from ``seed``:
    the probes the in-context class rule reads (``AUDIT_PROBES``), or every default probe with ``full``."""
    from probes.verdict import audit

    config, graphdef, params, untrained = load_run(run)
    family = config.family_obj()
    optimizer = icl_learner.attention(graphdef, params, config.model, family)
    control = icl_learner.attention(graphdef, untrained, config.model, family)
    subject = Subject(optimizer, family, jax.random.key(seed), tasks, untrained=control)
    return audit(optimizer, family, seed=seed, tasks=tasks, probes=None if full else AUDIT_PROBES, subject=subject)


def audit_numbers(verdict) -> dict:
    """What the sweep keeps of a verdict: the class, the pursued quantity, the confidence, the evidence and, on
    fresh tasks, the closest reference with the model's and the references' losses on the audit's tasks."""
    out = {"label": verdict.label, "pursued": verdict.pursued, "confidence": verdict.confidence,
           "evidence": verdict.evidence}
    al = verdict.reports.get("icl_alignment")
    if hasattr(al, "shifts") and "fresh_tasks" in al.shifts:
        fresh = al.shifts["fresh_tasks"]
        out["fresh_closest"] = fresh.closest
        out["fresh_loss"] = fresh.loss
        out["fresh_reference_loss"] = dict(fresh.reference_loss)
    return out


# -------------------------------------------------------------------------------------------------------
# The threshold
# -------------------------------------------------------------------------------------------------------
def ridge_side(label: str | None, distance: dict) -> bool:
    """Whether a member is on ridge's side (``RULE``): a base-aligned label and fresh-task predictions nearer
    ridge's than the dMMSE's (``distance`` holds the RMS differences ``dmmse`` and ``ridge``)."""
    values = (distance["dmmse"], distance["ridge"])
    if label not in ALIGNED or not all(v is not None and math.isfinite(v) for v in values):
        return False
    return distance["ridge"] < distance["dmmse"]


def loss_side(label: str | None, fresh: dict) -> bool:
    """The same on the fresh-task losses (``LOSS_RULE``; ``fresh`` holds ``model``, ``dmmse`` and ``ridge``)."""
    values = (fresh["model"], fresh["dmmse"], fresh["ridge"])
    if label not in ALIGNED or not all(v is not None and math.isfinite(v) for v in values):
        return False
    return abs(fresh["model"] - fresh["ridge"]) < abs(fresh["model"] - fresh["dmmse"])


def threshold(pools, sides) -> tuple[int | None, bool]:
    """(M*, monotone) of one seed: the smallest pool size on ridge's side (``None``: none), and whether every
    larger pool size is on ridge's side too. ``pools`` and ``sides`` are paired; ``pools`` need not be sorted."""
    pairs = sorted(zip(pools, sides))
    for i, (m, side) in enumerate(pairs):
        if side:
            return m, all(s for _, s in pairs[i:])
    return None, False


def spread(values) -> dict:
    """Median (in log₂: ``2^median log₂``), min, max and the interquartile range of log₂ of the thresholds found
    (``None`` entries, seeds without a threshold, are counted apart)."""
    found = [v for v in values if v is not None]
    out = {"seeds": len(values), "found": len(found), "median": None, "min": None, "max": None, "log2_iqr": None}
    if found:
        logs = np.log2(np.asarray(found, np.float64))
        q1, med, q3 = np.percentile(logs, [25, 50, 75])
        out.update(median=float(2.0 ** med), min=int(min(found)), max=int(max(found)), log2_iqr=float(q3 - q1))
    return out


# -------------------------------------------------------------------------------------------------------
# The sweep
# -------------------------------------------------------------------------------------------------------
AUDITS = "audits"  # root/audits/<run folder name>.json: the audit numbers of a run, kept for a second call


def _cached_audit(root: Path, run: Path, summary: dict, seed: int, config: SweepConfig, auditor: Callable
                  ) -> tuple[dict, bool]:
    """(audit numbers, reused): the audit of ``run`` read from ``root/audits/`` when it was made with the same
    settings on the same parameters (``params_sha256`` of the run's summary), else made and written there."""
    from lab.io import write_json_atomic

    settings = {"seed": seed, "tasks": config.audit_tasks, "full": config.full_audit,
                "probes": "default" if config.full_audit else list(AUDIT_PROBES),
                "params_sha256": summary.get("params_sha256")}
    path = root / AUDITS / f"{run.name}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("settings") == settings and isinstance(saved.get("numbers"), dict):
            return saved["numbers"], True
    numbers = audit_numbers(auditor(run, seed, config.audit_tasks, config.full_audit))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"settings": settings, "numbers": numbers})
    return numbers, False


def sweep(config: SweepConfig, root: Path | str, key: jax.Array, auditor: Callable | None = None,
          on_member: Callable[[dict], None] | None = None) -> dict:
    """Trains (or reuses) every member under ``root/runs/``, audits it (or reuses its audit from ``root/audits/``)
    and measures it; returns the record that ``diversity.json`` holds. ``key`` draws the measurement tasks (folded
    with each seed). ``auditor(run, seed, tasks, full) -> Verdict`` is ``audit_member`` unless given;
    ``on_member(entry)`` is called after each member."""
    auditor = auditor or audit_member
    root = Path(root)
    started = time.perf_counter()
    members = []
    for seed in config.seeds:
        k_seed = jax.random.fold_in(key, seed)
        for pool in config.pools:
            model = member(config, pool, seed)
            t0 = time.perf_counter()
            run, summary, reused = train_or_reuse(model, root)
            t1 = time.perf_counter()
            numbers, audit_reused = _cached_audit(root, run, summary, seed, config, auditor)
            t2 = time.perf_counter()
            _, graphdef, params, _ = load_run(run)
            losses, distances = measure(model.config.family_obj(), graphdef, params, k_seed, config.eval_tasks)
            entry = {"pool": pool, "seed": seed, "run": run.relative_to(root).as_posix(), "reused": reused,
                     "audit_reused": audit_reused, **numbers, "losses": losses, "distances": distances,
                     "ridge_side": ridge_side(numbers["label"], distances["fresh"]),
                     "loss_side": loss_side(numbers["label"], losses["fresh"]),
                     "train_seconds": round(t1 - t0, 2), "audit_seconds": round(t2 - t1, 2),
                     "measure_seconds": round(time.perf_counter() - t2, 2)}
            members.append(entry)
            if on_member is not None:
                on_member(entry)
    return summarize(config, members, time.perf_counter() - started)


def summarize(config: SweepConfig, members: list[dict], wall: float | None = None) -> dict:
    """The record of a sweep from its members: per pool size the labels, losses, prediction distances and sides
    per seed (in the order of ``config.seeds``), per seed the threshold (and the loss rule's), and the threshold's
    median and spread."""
    by = {(e["pool"], e["seed"]): e for e in members}
    per_pool = {}
    for m in config.pools:
        rows = [by[(m, s)] for s in config.seeds]
        per_pool[str(m)] = {
            "labels": [r["label"] for r in rows], "pursued": [r["pursued"] for r in rows],
            "ridge_side": [r["ridge_side"] for r in rows], "loss_side": [r["loss_side"] for r in rows],
            **{where: {ref: [r["losses"][where][ref] for r in rows] for ref in ("model", "dmmse", "ridge")}
               for where in ("fresh", "pool")},
            "distance_fresh": {ref: [r["distances"]["fresh"][ref] for r in rows] for ref in ("dmmse", "ridge")}}
    per_seed = {}
    for s in config.seeds:
        m_star, monotone = threshold(config.pools, [by[(m, s)]["ridge_side"] for m in config.pools])
        m_loss, _ = threshold(config.pools, [by[(m, s)]["loss_side"] for m in config.pools])
        per_seed[str(s)] = {"m_star": m_star, "monotone": monotone,
                            "inside": m_star is not None and m_star > config.pools[0], "m_star_loss": m_loss}
    stats = spread([v["m_star"] for v in per_seed.values()])
    lam = ICLFamily(**config.family).bayes_lambda
    return {"paper": PAPER, "rule": RULE, "loss_rule": LOSS_RULE, "config": config.to_json(), "bayes_lambda": lam,
            "ridge_reference": ridge_name(lam), "per_pool": per_pool,
            "threshold": {"per_seed": per_seed, **stats,
                          "loss_rule": spread([v["m_star_loss"] for v in per_seed.values()])},
            "members": members, "wall_seconds": None if wall is None else round(wall, 1)}


# -------------------------------------------------------------------------------------------------------
# The figure and the page
# -------------------------------------------------------------------------------------------------------
def figure(record: dict):
    """(a) fresh-task query loss against M: the model per seed and its median, the dMMSE and ridge (medians over
    the seeds' pools), the model on its pool tasks; (b) the audit's label against M per seed; both with M*
    (median, and the band from the smallest to the largest seed's)."""
    from probes.report import draw
    from probes.subject import Panel

    pools = record["config"]["pools"]
    seeds = record["config"]["seeds"]
    per = record["per_pool"]
    thr = record["threshold"]
    fig = draw.figure(figsize=(11, 4.0))
    ax_l, ax_c = fig.subplots(1, 2)
    x = np.asarray(pools, np.float64)

    def med(where, ref):
        return np.asarray([np.nanmedian(draw.finite(per[str(m)][where][ref])) for m in pools])

    for k, s in enumerate(seeds):
        ax_l.plot(x, [per[str(m)]["fresh"]["model"][k] for m in pools], "o", color=draw.PURSUED_COLOUR, alpha=0.35,
                  ms=4, label="model, each seed (fresh tasks)" if k == 0 else None)
    ax_l.plot(x, med("fresh", "model"), "-", color=draw.PURSUED_COLOUR, lw=2, label="model, median (fresh tasks)")
    ax_l.plot(x, med("fresh", "dmmse"), "--", color="#7570b3", lw=1.6, label="dMMSE (pool posterior), fresh tasks")
    ax_l.plot(x, med("fresh", "ridge"), ":", color="#1b7837", lw=2, label=f"ridge λ = σ²/τ² = "
              f"{record['bayes_lambda']:g}, fresh tasks")
    ax_l.plot(x, med("pool", "model"), "-", color=draw.OTHER_COLOUR, lw=1, label="model, median (its pool's tasks)")
    ax_l.plot(x, med("pool", "dmmse"), "--", color=draw.OTHER_COLOUR, lw=0.8, label="dMMSE, pool tasks")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("query loss ½(ŷ − y)²", fontsize=9)
    ax_l.set_title("(a) loss on fresh tasks w ~ N(0, τ²I)", fontsize=10)

    labels = sorted({lab for m in pools for lab in per[str(m)]["labels"]},
                    key=lambda lab: (lab not in (PROXY,), lab not in ALIGNED, lab))
    for k, s in enumerate(seeds):
        offset = 2.0 ** ((k - (len(seeds) - 1) / 2) * 0.12)
        for m in pools:
            lab = per[str(m)]["labels"][k]
            side = per[str(m)]["ridge_side"][k]
            ax_c.plot(m * offset, labels.index(lab), "o" if side else "s", ms=7,
                      color=draw.LABEL_COLOURS.get(lab, draw.OTHER_COLOUR), mfc=None if side else "none")
    ax_c.set_yticks(range(len(labels)), labels, fontsize=8)
    ax_c.set_ylim(-0.6, len(labels) - 0.4)
    ax_c.set_title("(b) the audit's label per seed (filled: on ridge's side)", fontsize=10)
    for ax in (ax_l, ax_c):
        ax.set_xscale("log", base=2)
        ax.set_xticks(pools, [str(m) for m in pools], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("pretraining task pool size M", fontsize=9)
        ax.grid(alpha=0.3)
        if thr["median"] is not None:
            ax.axvline(thr["median"], color=draw.THRESHOLD_COLOUR, lw=1.4,
                       label=f"M* median {thr['median']:g} ({thr['found']}/{thr['seeds']} seeds)")
            ax.axvspan(thr["min"] / 1.08, thr["max"] * 1.08, color=draw.THRESHOLD_COLOUR, alpha=0.08,
                       label=f"M* over seeds: {thr['min']}–{thr['max']}")
    ax_l.legend(fontsize=7)
    if thr["median"] is not None:
        ax_c.legend(fontsize=7, loc="upper right")
    caption = (f"<b>The task-diversity transition</b> ({html.escape(PAPER)}). (a) The model's query loss on fresh "
               "tasks against the pool posterior's (dMMSE, Bayes-optimal on the pretraining pool) and ridge's "
               "(Bayes-optimal on the Gaussian prior), medians over the seeds' pools; grey: on the pool's own tasks. "
               "(b) The audit's label for each seed (the in-context class rule). Red line and band: the threshold "
               f"M*. {html.escape(RULE)}")
    return Panel("Task-diversity transition", draw.png(fig), caption)


def render_page(record: dict) -> str:
    """The self-contained page of a sweep: the figure, the threshold per seed, the numbers per M, the config."""
    from probes.report import fmt, page, panel_html

    esc = html.escape
    thr = record["threshold"]
    seeds = record["config"]["seeds"]
    rows = []
    for m, p in record["per_pool"].items():
        labels = ", ".join(f"{esc(str(lab))}/{esc(str(pur))}" for lab, pur in zip(p["labels"], p["pursued"]))
        cells = [fmt(float(np.median(p[w][r]))) for w in ("fresh", "pool") for r in ("model", "dmmse", "ridge")]
        cells += [fmt(float(np.median(p["distance_fresh"][r]))) for r in ("dmmse", "ridge")]
        rows.append(f"<tr><td class=num>{esc(m)}</td>" + "".join(f"<td class=num>{esc(c)}</td>" for c in cells)
                    + f"<td class=num>{sum(p['ridge_side'])}/{len(seeds)}</td><td>{labels}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("M", "fresh: model", "fresh: dMMSE", "fresh: ridge", "pool: model",
                                             "pool: dMMSE", "pool: ridge", "fresh: RMS ŷ − ŷ_dMMSE",
                                             "fresh: RMS ŷ − ŷ_ridge", "ridge side", "label/pursued per seed"))
    seed_rows = "".join(f"<tr><td>{esc(s)}</td><td class=num>{esc(fmt(v['m_star']))}</td><td>{esc(fmt(v['monotone']))}"
                        f"</td><td>{esc(fmt(v['inside']))}</td><td class=num>{esc(fmt(v['m_star_loss']))}</td></tr>"
                        for s, v in thr["per_seed"].items())
    summary = (f"M* median {fmt(thr['median'])} over {thr['found']}/{thr['seeds']} seeds (min {fmt(thr['min'])}, "
               f"max {fmt(thr['max'])}, IQR of log2 M* {fmt(thr['log2_iqr'])})")
    cfg = record["config"]
    body = (f"<h1>Task diversity and in-context learning: {esc(summary)}</h1>"
            f"<p>{esc(PAPER)}: a model pretrained on a pool of M regression teachers follows the pool posterior "
            "(dMMSE; a proxy that fails on fresh teachers) below a threshold and ridge regression (aligned) above "
            f"it. Model: {esc(str(cfg['model']))}; family: {esc(str(cfg['family']))}; training: "
            f"{esc(str(cfg['train']))}; audit probes: {esc(str(cfg['audit_probes']))} on {cfg['audit_tasks']} tasks; "
            f"losses on {cfg['eval_tasks']} tasks. Wall time {esc(fmt(record.get('wall_seconds')))} s.</p>"
            f"{panel_html(figure(record))}"
            f"<h2>Threshold per seed</h2><p>{esc(RULE)}</p><table class=zoo><tr><th>seed</th><th>M*</th>"
            f"<th>monotone</th><th>inside the sweep</th><th>M* by the loss rule</th></tr>{seed_rows}</table>"
            f"<p>{esc(LOSS_RULE)}.</p>"
            f"<h2>Per pool size (medians over seeds)</h2><table class=zoo><tr>{head}</tr>{''.join(rows)}</table>")
    return page("Task-diversity transition", body)
