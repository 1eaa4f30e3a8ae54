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
