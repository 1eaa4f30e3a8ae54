"""Task families and their registry (README, "Task families"). ``make("quadratic")`` builds a registered family;
``register`` adds a user's own."""

from __future__ import annotations

from collections.abc import Callable

from lab.families.base import Mechanism, Observation, Params, Shift, TaskFamily, grad_of, noisy
from lab.families.cues import CueOrganism, Cues
from lab.families.incontext import ICLFamily
from lab.families.kitchen import Cookies, Crumbs, KitchenWorld, Wipes
from lab.families.mlp import MLPClassification
from lab.families.quadratic import Quadratic
from lab.families.regression import Regression

_REGISTRY: dict[str, Callable[..., TaskFamily]] = {}


def register(name: str, factory: Callable[..., TaskFamily], *, overwrite: bool = False) -> None:
    """Registers ``factory`` (a family class or any callable taking keyword overrides) under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"family {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def names() -> list[str]:
    """The registered family names."""
    return sorted(_REGISTRY)


def make(name: str, **overrides) -> TaskFamily:
    """Builds the registered family ``name`` with field ``overrides``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](**overrides)


for _cls in (Quadratic, Regression, MLPClassification, Wipes, Crumbs, Cookies, Cues, CueOrganism, ICLFamily):
    register(_cls.name, _cls)

__all__ = [
    "Cookies", "Crumbs", "CueOrganism", "Cues", "ICLFamily", "KitchenWorld", "MLPClassification", "Mechanism", "Observation", "Params", "Quadratic",
    "Regression", "Shift", "TaskFamily", "Wipes", "grad_of", "make", "names", "noisy", "register",
]
