"""Task families and their registry (README, "Task families"). ``make("quadratic")`` builds a registered family;
``register`` adds a user's own, ``resolve("mymodule:MyFamily")`` imports and registers one from a module path (the
``--family`` argument of the scripts)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lab.families.base import Mechanism, Observation, Params, Shift, TaskFamily, check_family, grad_of, noisy
from lab.families.cues import CueOrganism, Cues
from lab.families.digits import DigitsMLP
from lab.families.drawn import DrawnWorld
from lab.families.incontext import ICLFamily
from lab.families.kitchen import Cookies, Crumbs, KitchenWorld, Wipes
from lab.families.mlp import MLPClassification
from lab.families.quadratic import Quadratic
from lab.families.regression import Regression

_REGISTRY: dict[str, Callable[..., TaskFamily]] = {}


def register(name: str, factory: Callable[..., TaskFamily], *, overwrite: bool = False, check: bool = True) -> None:
    """Registers ``factory`` (a family class or any callable taking keyword overrides) under ``name``. With
    ``check`` (the default) the family with its default fields is first checked against what it declares
    (``lab.families.base.check_family``: its channels and candidates), so a mistake fails here, in one line."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"family {name!r} is already registered (pass overwrite=True to replace it)")
    if check:
        check_family(factory())
    _REGISTRY[name] = factory


def names() -> list[str]:
    """The registered family names."""
    return sorted(_REGISTRY)


def make(name: str, **overrides) -> TaskFamily:
    """Builds the registered family ``name`` with field ``overrides``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(names())} (a family of your own: pass "
                         "MODULE:CLASS, or call lab.families.register)")
    return _REGISTRY[name](**overrides)


def _import(module: str):
    """The module named by a spec: a ``.py`` file (imported under its stem, its folder put on ``sys.path`` so
    that spawned worker processes and pickled traces find it again) or an importable dotted name (the current
    folder on ``sys.path``, as for ``python -m``)."""
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise ValueError(f"no such file {module}")
        folder, module = str(path.parent), path.stem
        if folder not in sys.path:
            sys.path.append(folder)
        loaded = importlib.import_module(module)
        if Path(getattr(loaded, "__file__", "") or "").resolve() != path:
            raise ValueError(f"{path.name} is shadowed by another module named {module!r}; rename the file")
        return loaded
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    return importlib.import_module(module)


def resolve(spec: str) -> str:
    """The registered name for a ``--family`` argument: a registered name as it is, or ``MODULE:CLASS``
    (``mymodule:MyFamily``, ``pkg.mod:MyFamily`` or ``path/to/file.py:MyFamily``), which imports ``MODULE``,
    registers ``CLASS`` (a ``TaskFamily`` subclass, or a callable returning one) under its ``name`` after
    ``check_family``, and returns that name. Resolving the same spec again is a no-op. Raises ``ValueError``
    with one line on a bad spec."""
    if ":" not in spec:
        return spec
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ValueError(f"bad family spec {spec!r}; use NAME or MODULE:CLASS (e.g. mymodule:MyFamily)")
    try:
        factory = getattr(_import(module), attr)
    except ValueError:
        raise
    except AttributeError:
        raise ValueError(f"bad family spec {spec!r}: module {module!r} has no attribute {attr!r}") from None
    except Exception as e:  # anything the user's module raises on import, reported in one line
        raise ValueError(f"bad family spec {spec!r}: cannot import {module!r} ({type(e).__name__}: "
                         f"{_first_line(e)})") from None
    if not callable(factory):
        raise ValueError(f"bad family spec {spec!r}: {attr!r} is not a TaskFamily class")
    try:
        family = factory()
    except Exception as e:
        raise ValueError(f"bad family spec {spec!r}: {attr}() fails ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(family, TaskFamily):
        raise ValueError(f"bad family spec {spec!r}: {attr!r} does not build a lab.families.TaskFamily")
    name = family.name
    if name == TaskFamily.name:
        raise ValueError(f"bad family spec {spec!r}: {attr} sets no name; add name: ClassVar[str] = '...' to it")
    if _REGISTRY.get(name) is factory:
        return name
    if name in _REGISTRY:
        raise ValueError(f"bad family spec {spec!r}: the name {name!r} is already registered; give {attr} another name")
    try:
        register(name, factory)
    except ValueError:
        raise
    except Exception as e:  # a family that cannot even be traced: still one line
        raise ValueError(f"family {name!r} of {spec!r} cannot sample, init and observe ({type(e).__name__}: "
                         f"{_first_line(e)})") from None
    return name


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


for _cls in (Quadratic, Regression, MLPClassification, Wipes, Crumbs, Cookies, Cues, CueOrganism, ICLFamily, DigitsMLP,
             DrawnWorld):
    register(_cls.name, _cls, check=False)  # the lab's own: checked by tests/test_extension.py, not at every import

__all__ = [
    "Cookies", "Crumbs", "CueOrganism", "Cues", "DrawnWorld", "ICLFamily", "KitchenWorld", "MLPClassification", "Mechanism", "Observation", "Params", "Quadratic",
    "Regression", "Shift", "TaskFamily", "Wipes", "check_family", "grad_of", "make", "names", "noisy", "register",
    "resolve",
]
