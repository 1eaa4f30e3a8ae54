"""What every probe shares: the subject of an audit (optimizer + family, with cached traces), typed reports
with a JSON form, and the probe registry users add their own probes to (README, "Writing a new experiment")."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lab.families.base import TaskFamily, family_parts, rebuilt
from lab import rollout
from lab.optimizers.base import Optimizer, Parametric, built, program_parts
from probes.trace import Trace, wanted, record


def to_json(value: Any) -> Any:
    """JSON-ready data: dataclasses as dicts, arrays as lists, non-finite floats as ``None``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return to_json(np.asarray(value).tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class Panel(NamedTuple):
    """One figure of a report: ``png`` a base64 PNG with ``caption`` (HTML) under it, or ``png`` ``None`` and
    ``caption`` the reason the figure could not be drawn (plain text)."""

    title: str
    png: str | None
    caption: str


@dataclasses.dataclass(frozen=True)
class Report:
    """Base of every probe's report: a frozen dataclass that describes itself to the views.

    - ``to_json()``: its JSON form (``report.json``).
    - ``summary(base)``: one line with its key figures (default: its scalar fields).
    - ``figures(base, pursued)``: its figures as ``Panel``s (default: none), given the family's base and the
      verdict's pursued quantity (``None`` when none was identified).

    The views (``probes.report``) call these on every report and never look at a probe's name, so a user's
    probe gets its line and figures on every page by overriding them."""

    def to_json(self) -> dict:
        return {"probe": type(self).__name__, **to_json(self)}

    def summary(self, base: str) -> str:
        from probes.report.draw import is_scalar, pairs  # here: probes.report imports this module

        data = self.to_json()
        data.pop("probe", None)
        scalars = {k: v for k, v in data.items() if is_scalar(v)}
        return pairs(scalars) if scalars else f"{len(data)} fields (see report.json)"

    def figures(self, base: str, pursued: str | None) -> list[Panel]:
        return []


# Every random draw of an audit comes from the subject's key. Rollouts use the key itself (the same task keys on
# every shift, so shifts are compared on paired tasks); a probe that needs draws of its own takes a named
# stream, derived here and nowhere else. The fold-in numbers are those the probes used before the streams had
# names, so that a seed keeps giving the same numbers.
STREAMS = {
    "curl": 4,             # the observation and estimator keys of the curl probe (field.curl_report)
    "reference": 7,        # the tasks Adam's learning rate is tuned on (competence.reference_optimizer)
    "untrained": 11,       # the untrained network of the representation control (representation_report)
    "dynamics": 13,        # the coordinates and observation keys of the dynamics probe (catalogue.dynamics)
}


def capture_names(optimizer: Optimizer | Parametric, family: TaskFamily) -> tuple[str, ...]:
    """The names of the captures ``optimizer`` returns on ``family``, from one abstract step (nothing runs).
    Made once per (optimizer or ``make``, family): names are structure, the same for every argument."""
    opt, make, args = program_parts(optimizer)
    if (opt, make, family) not in _CAPTURE_NAMES:
        def one(key, a):
            built_opt = built(opt, make, a)
            state = rollout.start(family, built_opt, key)
            obs = rollout.observe(family, built_opt, state.params, state.task, key)
            return built_opt.update(obs, state.opt_state, state.params)[2]

        # Abstract: no number drawn from this key is used.
        _CAPTURE_NAMES[opt, make, family] = tuple(jax.eval_shape(one, jax.random.key(0), args))
    return _CAPTURE_NAMES[opt, make, family]


_CAPTURE_NAMES: dict = {}


# The longest horizon multiple the default probes ask for (the capability sweep's): every trace at a longer
# horizon or with larger steps is a prefix of the rollout at this multiple (``Subject.trace``).
LONGEST = 10


def stream(key: jax.Array, name: str) -> jax.Array:
    """The named random stream of ``key`` (``STREAMS``)."""
    if name not in STREAMS:
        raise ValueError(f"unknown random stream {name!r}; known: {', '.join(STREAMS)}")
    return jax.random.fold_in(key, STREAMS[name])


@dataclasses.dataclass
class Subject:
    """The optimizer and family under audit, with the rollouts probes share (cached by their settings).

    ``key`` fixes every rollout: two probes asking for the same trace get the same numbers, and traces on
    different shifts use the same task keys, so shifts are compared on paired tasks. ``untrained`` is the same
    architecture at its initial parameters where the member has one (learned and in-context members): the
    control of the linear probes.

    A trained optimizer is best given as a ``Parametric`` (``LearnedOptimizer.parametric(meta)``, what
    ``lab.load.load`` returns): the programs of the default probes then take its meta-parameters as an argument,
    so every run and seed of one architecture shares their compilation. Probes whose programs hold the optimizer
    as a constant read ``concrete``.
    """

    optimizer: Optimizer | Parametric
    family: TaskFamily
    key: jax.Array
    tasks: int = 32
    untrained: Optimizer | None = None
    _traces: dict = dataclasses.field(default_factory=dict, repr=False)

    def trace(self, shift: str = "train", horizon_mult: float = 1, step_mult: float = 1.0,
              captures: tuple[str, ...] | bool = False, optimizer: Optimizer | Parametric | None = None,
              name: str = "subject") -> Trace:
        """The rollout on ``shift`` for ``horizon_mult`` × that shift's horizon with updates × ``step_mult``.
        ``optimizer``/``name`` run another optimizer (a reference) on the same tasks."""
        if optimizer is None and captures and not any(wanted(captures, c) for c in capture_names(self.optimizer,
                                                                                              self.family)):
            captures = False  # a filter that keeps nothing is no filter: the plain rollout, compiled once
        cache_key = (shift, horizon_mult, step_mult, captures, name)
        if cache_key not in self._traces:
            steps = int(round(self.family.shift(shift).horizon * horizon_mult))
            if (horizon_mult > 1 or step_mult != 1.0) and horizon_mult < LONGEST:
                # Longer horizons and larger steps are read off one rollout of LONGEST × the horizon (one rollout
                # instead of one per setting; the same numbers, step keys being a prefix split).
                longest = self.trace(shift, LONGEST, step_mult, captures, optimizer, name)
                self._traces[cache_key] = longest.prefix(steps)
                return self._traces[cache_key]
            opt = self.optimizer if optimizer is None else optimizer
            self._traces[cache_key] = record(opt, self.family, self.key, self.tasks, steps, shift, captures,
                                             step_mult=step_mult)
        return self._traces[cache_key]

    @functools.cached_property
    def concrete(self) -> Optimizer:
        """The optimizer as a plain ``Optimizer`` (a ``Parametric`` built at its arguments, made once per subject):
        for the probes whose programs close over the optimizer (curl, dynamics, the in-context fixed points), which
        therefore compile once per subject rather than once per architecture."""
        return built(*program_parts(self.optimizer))

    def stream(self, name: str) -> jax.Array:
        """The subject's named random stream (``STREAMS``)."""
        return stream(self.key, name)

    def candidates(self) -> list[str]:
        """The quantities probes test as objectives: the base first, then the others, without the family's
        ``not_candidates`` (``TaskFamily.candidates``, the one place that filters them)."""
        return self.family.candidates()

    def behaviour_shifts(self) -> list[str]:
        """The family's shifts that move the optimizer off its training distribution: every named shift but
        ``train`` and ``cue_deploy`` (a change of the cue alone, read by the ``cues`` probe)."""
        return [s for s in self.family.shifts() if s not in ("train", "cue_deploy")]


ProbeFn = Callable[[Subject], Report]
PROBES: dict[str, ProbeFn] = {}


def register_probe(name: str, fn: ProbeFn | None = None, *, overwrite: bool = False):
    """Registers ``fn(subject) -> Report`` under ``name``; usable as a decorator ``@register_probe("x")``."""

    def add(f):
        if name in PROBES and not overwrite:
            raise ValueError(f"probe {name!r} is already registered (pass overwrite=True to replace it)")
        PROBES[name] = f
        return f

    return add if fn is None else add(fn)


def get_probe(name: str) -> ProbeFn:
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; known: {', '.join(sorted(PROBES))}")
    return PROBES[name]


@functools.lru_cache(maxsize=None)
def _quantity_gradients_fn(skeleton: TaskFamily, names: tuple[str, ...]):
    """The jitted gradients of ``quantity_gradients``, made once per (family skeleton, names)."""

    def at(p, task, numbers):
        family = rebuilt(skeleton, numbers)
        return {n: jax.grad(family.quantity(n))(p, task) for n in names}

    return jax.jit(jax.vmap(jax.vmap(at, in_axes=(0, None, None)), in_axes=(0, 0, None)))


def quantity_gradients(family: TaskFamily, names: list[str], params: dict, tasks) -> dict[str, dict]:
    """Exact gradients of the named quantities at every recorded θ: arrays (tasks, steps, ...) per block."""
    skeleton, numbers = family_parts(family)
    out = _quantity_gradients_fn(skeleton, tuple(names))(jax.tree.map(jnp.asarray, params),
                                                         jax.tree.map(jnp.asarray, tasks), numbers)
    return jax.tree.map(np.asarray, out)


Decision = tuple[str, "str | None", float, str]  # (label, pursued quantity, confidence, evidence)
FamilyRule = Callable[[dict[str, Report], TaskFamily], "Decision | None"]
RULES: dict[str, FamilyRule] = {}


def register_rule(family_name: str, fn: FamilyRule | None = None, *, overwrite: bool = False):
    """Registers a family's own class rule, ``fn(reports, family) -> Decision | None``, consulted by the verdict
    right after the competence gate for subjects on the family named ``family_name``; usable as a decorator.

    A rule is the hook for what only a family knows (the in-context family: which closed-form learners serve
    the base, and the Bayes-optimal query error); ``None`` lets the general procedure go on."""

    def add(f):
        if family_name in RULES and not overwrite:
            raise ValueError(f"a rule for family {family_name!r} is already registered (pass overwrite=True)")
        RULES[family_name] = f
        return f

    return add if fn is None else add(fn)
