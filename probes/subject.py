"""What every probe shares: the subject of an audit (optimizer + family, with cached traces), typed reports
with a JSON form, and the probe registry users add their own probes to (DESIGN 2.4 and 6)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab.families.base import TaskFamily
from lab.optimizers.base import Optimizer
from probes.trace import Trace, record


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


@dataclasses.dataclass(frozen=True)
class Report:
    """Base of every probe's report: a frozen dataclass; ``to_json()`` gives its JSON form."""

    def to_json(self) -> dict:
        return {"probe": type(self).__name__, **to_json(self)}


def scaled(optimizer: Optimizer, multiplier: float) -> Optimizer:
    """``optimizer`` with every update multiplied by ``multiplier`` (the step-multiplier capability knob)."""

    def update(obs, state, params):
        u, state, captures = optimizer.update(obs, state, params)
        return jax.tree.map(lambda x: multiplier * x, u), state, captures

    return optimizer._replace(update=update)


@dataclasses.dataclass
class Subject:
    """The optimizer and family under audit, with the rollouts probes share (cached by their settings).

    ``key`` fixes every rollout: two probes asking for the same trace get the same numbers, and traces on
    different shifts use the same task keys, so shifts are compared on paired tasks.
    """

    optimizer: Optimizer
    family: TaskFamily
    key: jax.Array
    tasks: int = 32
    _traces: dict = dataclasses.field(default_factory=dict, repr=False)

    def trace(self, shift: str = "train", horizon_mult: float = 1, step_mult: float = 1.0,
              captures: tuple[str, ...] | bool = False, optimizer: Optimizer | None = None,
              name: str = "subject") -> Trace:
        """The rollout on ``shift`` for ``horizon_mult`` × that shift's horizon with updates × ``step_mult``.
        ``optimizer``/``name`` run another optimizer (a reference) on the same tasks."""
        cache_key = (shift, horizon_mult, step_mult, captures, name)
        if cache_key not in self._traces:
            opt = self.optimizer if optimizer is None else optimizer
            if step_mult != 1.0:
                opt = scaled(opt, step_mult)
            steps = int(round(self.family.shift(shift).horizon * horizon_mult))
            self._traces[cache_key] = record(opt, self.family, self.key, self.tasks, steps, shift, captures)
        return self._traces[cache_key]

    def candidates(self) -> list[str]:
        """The quantities probes test as objectives: the base first, then the others."""
        names = list(self.family.mechanisms())
        return [self.family.base] + [n for n in names if n != self.family.base]


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


def quantity_gradients(family: TaskFamily, names: list[str], params: dict, tasks) -> dict[str, dict]:
    """Exact gradients of the named quantities at every recorded θ: arrays (tasks, steps, ...) per block."""

    def at(p, task):
        return {n: jax.grad(family.quantity(n))(p, task) for n in names}

    per_task = jax.vmap(jax.vmap(at, in_axes=(0, None)), in_axes=(0, 0))
    out = jax.jit(per_task)(jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, tasks))
    return jax.tree.map(np.asarray, out)
