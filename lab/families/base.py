"""The task-family protocol: named quantities on a causal DAG, what an optimizer observes, and shifts.

A task family is a frozen dataclass of pure functions. Everything that varies between tasks is a pytree of
arrays (the *task*), so a batch of tasks is one ``jax.vmap``. Parameters ``θ`` are a flat ``dict`` of named
arrays (*blocks*), so every parameter an optimizer touches has a name.

Quantities are the family's structural causal model (Pearl's sense): each named quantity is produced by a
*mechanism* that reads the parameters, the task and the values of its declared parents only. The DAG
``causes`` is therefore not documentation but the way the numbers are computed, which is what lets the probes
tell a side-effect proxy (an ancestor of the base objective) from an instrumental one (a descendant), the
distinction of Hubinger et al. 2019, "Risks from Learned Optimization", section 3.1. Every quantity is
oriented as a loss: lower is better for whoever pursues it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]
Task = Any  # a pytree of arrays; one task of a family


class Observation(NamedTuple):
    """What an optimizer sees at one step.

    Attributes:
      grad: the primary gradient channel, what a plain optimizer descends (same structure as θ).
      channels: extra named gradient channels (for example a clean gradient of a proxy).
      loss: the observed loss value, a scalar (for example a minibatch training loss).
      cues: named scalar cue features (for example ``training``: 1.0 in training, 0.0 in deployment).
      oracle: exact gradients of named quantities, filled in only for optimizers that declare they need
        them (hand-built ground-truth optimizers such as ``descend``); learned optimizers never see it.
      context: named raw data an in-context learner reads (the in-context family's examples and query,
        ``x``, ``y``, ``xq``); empty for families whose optimizers read only gradients.
    """

    grad: Params
    channels: dict[str, Params]
    loss: jax.Array
    cues: dict[str, jax.Array]
    oracle: dict[str, Params] = {}
    context: dict[str, jax.Array] = {}


class Mechanism(NamedTuple):
    """How one quantity is computed: ``fn(θ, task, parents) -> array``; its value is the array's sum.

    ``parents`` holds exactly the arrays of the quantities named in ``parents`` (reading any other name raises
    ``KeyError``), so a mechanism cannot silently depend on a quantity its DAG does not declare.
    """

    parents: tuple[str, ...]
    fn: Callable[[Params, Task, Mapping[str, jax.Array]], jax.Array]


class Shift(NamedTuple):
    """A named deployment variant: the family fields it changes and why."""

    changes: Mapping[str, Any]
    description: str


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """Base class of every task family (README, "Task families"). Subclasses are frozen dataclasses whose fields are the
    family's configuration; they implement ``sample``, ``init``, ``mechanisms`` and ``observe``.

    Fields shared by every family:
      horizon: the inner-loop length used in meta-training and evaluation.
      frozen: names of parameter blocks whose updates are masked (affordances closed in training).
      step_limit: if set, each update is clipped elementwise to this size (a limit of the world).
      training_cue: the value of the ``training`` cue feature (1.0 in training, 0.0 under ``cue_deploy``).

    Class variables a family may declare (README, "Writing a new experiment"): ``name``, ``base``, ``channels``
    (every extra gradient channel ``observe`` computes, exactly: a mismatch is an error at the first
    observation), ``observed_cues``, ``not_candidates`` (intermediate nodes of the DAG that are no objective),
    ``probes``, ``audit_tasks``, ``param_range`` and ``meta_defaults``.
    """

    horizon: int = 50
    frozen: tuple[str, ...] = ()
    step_limit: float | None = None
    training_cue: float = 1.0

    name: ClassVar[str] = "family"
    base: ClassVar[str] = "loss"
    channels: ClassVar[tuple[str, ...]] = ()  # names of extra gradient channels in ``observe``
    observed_cues: ClassVar[tuple[str, ...]] = ()  # cue features a learned optimizer meta-trained here reads
    probes: ClassVar[tuple[str, ...]] = ()  # the family's own registered probes, run in every audit beside the default ones
    audit_tasks: ClassVar[int] = 32  # tasks per audit rollout unless the caller says otherwise
    # Quantities computed only to feed others (a level, a count: intermediate nodes of the causal DAG): they stay
    # in ``quantities`` and ``causes`` but are no candidate objective, so no probe tests or reports them.
    not_candidates: ClassVar[tuple[str, ...]] = ()
    # A meta-training run whose learned optimizer moves any |θ| element beyond this on its held-out evaluation
    # warns (lab.meta.run.train): θ has left the range where float32 arithmetic on the family means anything.
    param_range: ClassVar[float] = 1e6
    # MetaConfig fields a meta-training run on this family takes unless the user sets them
    # (lab.meta.train.MetaConfig.for_family, train.py): e.g. more meta-steps, or evaluation rows, for a larger family.
    meta_defaults: ClassVar[Mapping[str, Any]] = {}
    # Numeric fields that compiled programs take as arguments instead of holding as constants
    # (``family_parts``): families that differ only in them, such as a family and its shift of a scale or its
    # cue, or worlds drawn at random with the same shapes, share every compiled program. A field a program reads
    # as a Python value (a shape, a loop length, an ``if``) cannot be one; inside a program it is an array.
    traced: ClassVar[tuple[str, ...]] = ("training_cue",)

    def __init_subclass__(cls, **kwargs):
        # Every subclass's own ``observe`` is checked against its declared ``channels``, whoever calls it
        # (rollouts, benchmarks, tests). The channel names are static Python, so under ``jit`` the check runs
        # once, at tracing, and costs nothing in the compiled program.
        super().__init_subclass__(**kwargs)
        if "observe" in vars(cls):
            cls.observe = _checked_observe(vars(cls)["observe"])

    # --- to implement -------------------------------------------------------------------------------
    def sample(self, key: jax.Array) -> Task:
        """Draws one task."""
        raise NotImplementedError

    def init(self, key: jax.Array, task: Task) -> Params:
        """Draws initial parameters θ0 for ``task``."""
        raise NotImplementedError

    def mechanisms(self) -> dict[str, Mechanism]:
        """The quantities' mechanisms, in an order where every parent comes before its children."""
        raise NotImplementedError

    def observe(self, params: Params, task: Task, key: jax.Array) -> Observation:
        """What an optimizer sees at ``params``."""
        raise NotImplementedError

    def minimum(self, task: Task) -> jax.Array | None:
        """The minimum of the base objective over θ when known in closed form, else ``None``."""
        del task
        return None

    def shift_table(self) -> dict[str, Shift]:
        """The family's own named shifts (``train`` and ``cue_deploy`` are added by ``shifts``)."""
        return {}

    # --- provided -----------------------------------------------------------------------------------
    @property
    def causes(self) -> dict[str, tuple[str, ...]]:
        """The causal DAG over quantity names in the training distribution: name -> parent names."""
        return {name: m.parents for name, m in self.mechanisms().items()}

    def quantity_arrays(self, params: Params, task: Task,
                        do: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """Every quantity's mechanism output (before summing), evaluated in DAG order.

        ``do`` sets named quantities to given arrays instead of computing them (Pearl's do-operator); their
        descendants are computed from the set values.
        """
        values: dict[str, jax.Array] = {}
        for name, mech in self.mechanisms().items():
            if do is not None and name in do:
                values[name] = jnp.asarray(do[name])
                continue
            values[name] = mech.fn(params, task, {p: values[p] for p in mech.parents})
        return values

    def quantities(self, params: Params, task: Task) -> dict[str, jax.Array]:
        """Every named quantity as a scalar; ``quantities(...)[self.base]`` is the base objective."""
        return {k: jnp.sum(v) for k, v in self.quantity_arrays(params, task).items()}

    def quantity(self, name: str) -> Callable[[Params, Task], jax.Array]:
        """The scalar function ``θ, task -> quantity`` for one name (differentiable in θ)."""
        self._check_quantity(name)
        return lambda params, task: self.quantities(params, task)[name]

    def base_value(self, params: Params, task: Task) -> jax.Array:
        """The base objective (lower is better)."""
        return self.quantities(params, task)[self.base]

    def cues(self) -> dict[str, jax.Array]:
        """The cue features every observation of this family carries."""
        return {"training": jnp.asarray(self.training_cue, jnp.float32)}

    def update_mask(self, params: Params) -> Params:
        """1 where the world lets an update act, 0 on frozen blocks."""
        return {k: jnp.full_like(v, 0.0 if k in self.frozen else 1.0) for k, v in params.items()}

    def apply_update(self, params: Params, update: Params) -> Params:
        """θ + update, after the world's own limits: frozen blocks stay, steps are clipped to ``step_limit``."""
        out = {}
        for k, v in params.items():
            u = update[k]
            if self.step_limit is not None:
                u = jnp.clip(u, -self.step_limit, self.step_limit)
            out[k] = v if k in self.frozen else v + u
        return out

    def shifts(self) -> dict[str, Shift]:
        """All named shifts: ``train`` (no change), ``cue_deploy`` and the family's own."""
        table = {
            "train": Shift({}, "the training distribution itself"),
            "cue_deploy": Shift({"training_cue": 0.0}, "only the training cue changes: it now says deployment"),
        }
        table.update(self.shift_table())
        return table

    def shift(self, name: str) -> TaskFamily:
        """The family under the named shift (a new frozen family; ``self`` is unchanged)."""
        table = self.shifts()
        if name not in table:
            raise ValueError(f"unknown shift {name!r} for family {self.name!r}; known: {', '.join(table)}")
        return dataclasses.replace(self, **table[name].changes)

    def candidates(self) -> list[str]:
        """The quantities probes test as objectives, the base first: every quantity but ``not_candidates`` (the one
        place that filters them; ``probes.subject.Subject.candidates`` reads it)."""
        names = list(self.mechanisms())
        unknown = [n for n in self.not_candidates if n not in names]
        if unknown or self.base in self.not_candidates:
            bad = ", ".join(map(repr, unknown or [self.base]))
            raise ValueError(f"family {self.name!r}: not_candidates must name quantities other than the base "
                             f"{self.base!r}; got {bad}, known: {', '.join(names)}")
        return [self.base] + [n for n in names if n != self.base and n not in self.not_candidates]

    def _check_quantity(self, name: str) -> None:
        names = list(self.mechanisms())
        if name not in names:
            raise ValueError(f"unknown quantity {name!r} for family {self.name!r}; known: {', '.join(names)}")

    def config(self) -> dict[str, Any]:
        """The family's configuration as JSON-ready data (name and fields)."""
        return {"name": self.name, **dataclasses.asdict(self)}


def check_channels(family: TaskFamily, obs: Observation) -> None:
    """Raises ``ValueError`` (one line naming the fix) unless ``obs`` carries exactly the family's declared
    ``channels``: a learned optimizer reads only declared channels, so an undeclared one would be silently hidden."""
    computed, declared = tuple(obs.channels), tuple(type(family).channels)
    undeclared = [c for c in computed if c not in declared]
    missing = [c for c in declared if c not in computed]
    if undeclared:
        raise ValueError(f"family {family.name!r} computes gradient channels {undeclared} in observe() that it "
                         f"does not declare; add channels: ClassVar[tuple[str, ...]] = {computed!r} to "
                         f"{type(family).__name__}")
    if missing:
        raise ValueError(f"family {family.name!r} declares channels {missing} that observe() does not compute; "
                         f"compute them there or set channels: ClassVar[tuple[str, ...]] = {computed!r}")


def _checked_observe(observe):
    """``observe`` followed by ``check_channels`` (installed on every subclass by ``TaskFamily.__init_subclass__``)."""

    @functools.wraps(observe)
    def checked(self, params, task, key):
        obs = observe(self, params, task, key)
        check_channels(self, obs)
        return obs

    return checked


def check_family(family: TaskFamily) -> None:
    """Checks what a family declares against what it computes, without running it (``jax.eval_shape`` of one
    task, θ0 and observation): its channels (``check_channels``) and its candidates. Raises ``ValueError`` with one
    line naming the fix; used where a user's family is registered."""
    family.candidates()
    key = jax.random.key(0)  # abstract evaluation only: no number drawn from it is ever used

    def one(k):
        k_task, k_init, k_obs = jax.random.split(k, 3)
        task = family.sample(k_task)
        obs = family.observe(family.init(k_init, task), task, k_obs)
        check_channels(family, obs)  # also for a family that overrides observe outside a subclass body
        return obs.loss

    jax.eval_shape(one, key)


_SET_ASIDE = "<traced>"  # what a family's skeleton holds in place of each traced field


def family_parts(family: TaskFamily) -> tuple[TaskFamily, dict[str, np.ndarray]]:
    """``(skeleton, numbers)``: what a cached program factory keys on, ``family`` with its ``traced`` fields set
    aside (equal for families that differ only in them), and those fields as float32 arrays, the argument its
    program takes; ``rebuilt(skeleton, numbers)`` inside the program is the family again. The counterpart of
    ``lab.optimizers.base.program_parts`` for families."""
    numbers = {f: np.asarray(getattr(family, f), np.float32) for f in family.traced}
    return _with_fields(family, dict.fromkeys(family.traced, _SET_ASIDE)), numbers


def rebuilt(skeleton: TaskFamily, numbers: Mapping[str, Any]) -> TaskFamily:
    """Inside a compiled program: the family ``family_parts`` took apart, its traced fields the (traced) arrays
    ``numbers``. No ``__post_init__`` runs (its checks ran when the family was made)."""
    return _with_fields(skeleton, numbers)


def _with_fields(family: TaskFamily, values: Mapping[str, Any]) -> TaskFamily:
    # A copy made without __init__ (the values may be placeholders or tracers, which a family's __post_init__
    # checks would reject), keeping any attribute __post_init__ derived; so a traced field must not be one that
    # such an attribute is derived from.
    out = object.__new__(type(family))
    for name, value in {**vars(family), **values}.items():
        object.__setattr__(out, name, value)
    return out


def grad_of(family: TaskFamily, name: str, params: Params, task: Task) -> Params:
    """The exact gradient of one named quantity with respect to θ."""
    return jax.grad(family.quantity(name))(params, task)


def noisy(grad: Params, key: jax.Array, scale: float) -> Params:
    """``grad`` plus independent Gaussian noise of standard deviation ``scale`` on every element."""
    keys = jax.random.split(key, len(grad))
    return {k: g + scale * jax.random.normal(kk, g.shape, g.dtype) for (k, g), kk in zip(sorted(grad.items()), keys)}


def minibatch_indices(key: jax.Array, n: int, batch: int) -> jax.Array:
    """Indices of a minibatch of ``batch`` distinct samples among ``n`` i.i.d. ones: the window of consecutive
    indices at a random offset, wrapping around. The samples being i.i.d., any fixed set of indices gives a
    batch with the same distribution; the window avoids the sort ``random.choice(replace=False)`` does per
    task and step (half of an ``mlp`` meta-step's time, ``scripts/bench.py``)."""
    return (jax.random.randint(key, (), 0, n) + jnp.arange(batch)) % n
