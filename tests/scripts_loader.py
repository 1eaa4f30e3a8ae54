"""The lab's scripts as modules, for tests that call a script's ``main(argv)`` in the test process."""

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    """The module of ``scripts/<name>.py``, loaded once per process (its ``main(argv)`` is what a user runs)."""
    module_name = f"scripts_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[module_name]
