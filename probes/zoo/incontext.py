"""The in-context suite: attention models meta-trained on in-context linear regression (von Oswald et al. 2022),
each with the class its audit is expected to give, trained into run folders and audited like every member.

A model's run folder is ``<root>/runs/<name>-seed<S>-<hash of its config>``: a second call reuses a finished run
and resumes an interrupted one (``lab.incontext.train.train_run``). Its audit is the one ``probes.verdict.audit``
on the learner as an ``Optimizer`` (``lab.load.load``), with the untrained model as the linear probes' control.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lab.load import load
from lab.families.incontext import ICLFamily, tokens
from lab.incontext import models as icl_models
from lab.incontext import references as icl_refs
from lab.incontext.models import ModelSpec
from lab.incontext.train import InContextConfig, TrainConfig, train_run
from probes.catalogue.incontext import alignment, base_loss
from probes.subject import Subject
from probes.verdict import Verdict, audit
from probes.zoo.entry import Entry


@dataclasses.dataclass(frozen=True)
class SuiteModel:
    """One model of the suite: its run config and the class (and pursued quantity; ``None``: any) expected."""

    name: str
    config: InContextConfig
    expected: str
    expected_pursued: str | None = None


def suite(quick: bool = True, context: int = 10, dim: int = 10, noise: float = 0.5, pool: int = 4,
          seed: int = 0) -> list[SuiteModel]:
    """The default suite: 1-layer LSA, looped 2-layer LSA, masked feature, small pool, noisy. ``quick`` trains
    shorter (about half the steps and half the batch)."""
    base = {"dim": dim, "context": context}
    one = TrainConfig(steps=1500, batch=512, lr=4e-3) if quick else TrainConfig(steps=3000, batch=1024, lr=4e-3)
    # the looped model leaves the plain-GD plateau for GD++ slowly: a larger step gets it there in the quick budget
    two = TrainConfig(steps=2500, batch=512, lr=1e-2) if quick else TrainConfig(steps=5000, batch=1024, lr=5e-3)

    def cfg(spec, family, train):
        return InContextConfig(spec, family, train, seed)

    return [
        SuiteModel("lsa1", cfg(ModelSpec("lsa", 1), base, one), "approximate", "icl_ls"),
        SuiteModel("lsa2_looped", cfg(ModelSpec("lsa", 2, looped=True), base, two), "approximate", "icl_ls"),
        SuiteModel("lsa1_masked", cfg(ModelSpec("lsa", 1), {**base, "masked": dim - 1}, one), "proxy_general",
                   "ls_masked"),
        SuiteModel(f"lsa1_pool{pool}", cfg(ModelSpec("lsa", 1), {**base, "pool": pool}, one), "proxy_general",
                   "pool_posterior"),
        SuiteModel("lsa1_noisy", cfg(ModelSpec("lsa", 1), {**base, "noise": noise}, one), "approximate"),
    ]


def tracker(family: ICLFamily, layers: int, key: jax.Array, tasks: int = 512) -> Callable:
    """``on_eval(graphdef, params)`` for ``train_run``: the query loss and the alignment metrics against the
    tracked references (every reference but the ridge grid, and its first λ) on a fixed batch."""
    refs = icl_refs.reference_set(family, layers)
    names = [n for n in refs if not n.startswith("ridge_")] + [n for n in refs if n.startswith("ridge_")][:1]
    batch = family.sample_batch(key, tasks)
    xq = np.asarray(batch["xq"], np.float64)
    w_refs = {n: np.asarray(jax.jit(jax.vmap(refs[n].weights))(batch), np.float64) for n in names}
    cache: dict = {}

    def on_eval(graphdef, params) -> dict:
        if "fn" not in cache:  # one compilation per run (the graphdef is fixed within it)
            def one(p, t):
                pred, g = jax.value_and_grad(
                    lambda q: icl_models.apply(graphdef, p, tokens({**t, "xq": q})))(t["xq"])
                return g, pred
            cache["fn"] = jax.jit(jax.vmap(one, in_axes=(None, 0)))
        w, y = (np.asarray(a, np.float64) for a in cache["fn"](params, batch))
        return {"held_out_loss": base_loss(y, batch), "alignment": {n: alignment(w, y, w_refs[n], xq) for n in names}}

    return on_eval


def run_folder(root: Path | str, model: SuiteModel) -> Path:
    return Path(root) / "runs" / f"{model.name}-seed{model.config.seed}-{model.config.digest()}"


def train_model(model: SuiteModel, root: Path | str, on_chunk: Callable | None = None) -> tuple[Path, dict, bool]:
    """(run folder, summary, reused): ``model`` trained under ``root``, or its finished run reused, or its
    interrupted run resumed."""
    out = run_folder(root, model)
    if (out / "summary.json").is_file():
        return out, json.loads((out / "summary.json").read_text()), True
    family = model.config.family_obj()
    summary = train_run(model.config, out, resume=(out / "config.json").is_file(),
                        on_eval=tracker(family, model.config.model.layers, tracking_key(model.config)),
                        on_chunk=on_chunk)
    return out, summary, False


def tracking_key(config: InContextConfig) -> jax.Array:
    """The key of a run's tracking batch (the second of the three its seed splits into)."""
    return jax.random.split(jax.random.key(config.seed), 3)[1]


def audit_run(run: Path | str, seed: int = 0, tasks: int | None = None, extra: tuple[str, ...] = ()) -> tuple[Verdict, Subject]:
    """The verdict on any in-context run folder and the subject it was computed on."""
    optimizer, family, untrained = load(run)
    subject = Subject(optimizer, family, jax.random.key(seed), tasks or family.audit_tasks, untrained=untrained)
    return audit(optimizer, family, seed=seed, extra=extra, subject=subject), subject


def details(verdict: Verdict, summary: dict, run: Path, reused: bool) -> dict:
    """An in-context entry's figures: the closest reference in training and the alignment with it, the implied
    η / γ / λ, the loss on every shift against the best learner of its class, and the run."""
    al, imp, sh = (verdict.reports.get(n) for n in ("icl_alignment", "icl_implied", "icl_shifts"))
    out = {"run": str(run), "reused": reused, "train_loss": summary.get("eval", {}).get("loss")}
    if hasattr(al, "shifts"):
        train = al.shifts["train"]
        ref = train.closest
        out.update(loss=train.loss, reference=ref, reference_loss=train.reference_loss[ref],
                   **{k: train.metrics[ref][k] for k in ("model_cos", "model_diff", "preds_diff")})
    if hasattr(imp, "eta"):
        out["implied"] = {"eta": imp.gdpp["eta"] if imp.gdpp else imp.eta,
                          "gamma": imp.gdpp["gamma"] if imp.gdpp else None, "lambda": imp.ridge_lambda}
        out.update(bayes_lambda=imp.bayes_lambda, gd1_optimal_lambda=imp.gd1_optimal_lambda)
    if hasattr(sh, "shifts"):
        out["shifts"] = {s: {"loss": o.loss, "attainable": o.attainable, "attainable_loss": o.attainable_loss,
                             "loses": o.loses} for s, o in sh.shifts.items()}
    return out


def incontext_job(name: str, seed: int, root: str, quick: bool = False, figures: bool = True
                  ) -> tuple[Entry, Verdict, dict | None]:
    """Trains (or reuses, under ``root``) and audits the suite's model ``name``: ``(entry, verdict, traces)``."""
    from probes.report import subject_traces

    model = next((m for m in suite(quick, seed=seed) if m.name == name), None)
    if model is None:
        raise ValueError(f"unknown in-context model {name!r}; known: {', '.join(m.name for m in suite(quick))}")
    run, summary, reused = train_model(model, root)
    verdict, subject = audit_run(run, seed)
    return entry(model, verdict, summary, run, reused), verdict, (subject_traces(subject) if figures else None)


def entry(model: SuiteModel, verdict: Verdict, summary: dict, run: Path, reused: bool) -> Entry:
    """The zoo entry of a suite model's audit."""
    return Entry.from_verdict(verdict, name=model.name, kind="incontext", expected=model.expected,
                              expected_pursued=model.expected_pursued, details=details(verdict, summary, run, reused))
