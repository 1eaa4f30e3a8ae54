"""One protocol for every optimizer the lab audits, learned or hand-written (README, "Optimizers").

Close to optax's ``GradientTransformation`` (a pair of pure functions), with two differences: ``update``
reads a whole ``Observation`` (gradient channels, loss, cues) instead of one gradient, and it returns named
``captures`` (intermediates that probes read) beside the update and the new state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from lab.families.base import Observation, Params

Captures = dict[str, jax.Array]


class Optimizer(NamedTuple):
    """``init(θ) -> state``; ``update(observation, state, θ) -> (update, state, captures)``.

    The update is added to θ (it already carries its sign, as in optax). ``oracle`` names quantities whose
    exact gradients the optimizer needs in ``observation.oracle``; only hand-built ground-truth optimizers
    declare any.
    """

    init: Callable[[Params], Any]
    update: Callable[[Observation, Any, Params], tuple[Params, Any, Captures]]
    oracle: tuple[str, ...] = ()


class Parametric(NamedTuple):
    """An optimizer built inside a compiled program from traced arguments: ``make(args) -> Optimizer``.

    Programs of one ``make`` with different ``args`` (a tuned learning rate, meta-parameters) share one
    compilation, also through jax's persistent cache across processes, where an ``Optimizer`` closing over those
    values is compiled once per value (they are constants of its program). ``make`` must be the same function
    object each time (module-level, or from a cached factory such as ``LearnedOptimizer.parametric``)."""

    make: Callable[[Any], Optimizer]
    args: Any


def program_parts(optimizer: Optimizer | Parametric) -> tuple[Optimizer | None, Callable | None, Any]:
    """``(optimizer, make, args)``: what a cached program factory keys on (the first two, one of them ``None``)
    and the traced argument its program takes (``args``; ``None`` for a plain ``Optimizer``)."""
    if isinstance(optimizer, Parametric):
        return None, optimizer.make, optimizer.args
    return optimizer, None, None


def built(optimizer: Optimizer | None, make: Callable | None, args: Any) -> Optimizer:
    """Inside a compiled program: the optimizer ``program_parts`` took apart, made from the traced ``args``."""
    return optimizer if make is None else make(args)
