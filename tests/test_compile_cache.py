"""Every script's parser turns jax's persistent compilation cache on (``lab.compile_cache``): in the folder
the flag names, else in the one the environment names, and never with ``off``. Each case runs in a fresh
process (the cache is process-wide configuration, and this test session has set its own)."""

import os
import subprocess
import sys

CHILD = """
import sys
import jax, jax.numpy as jnp
from lab.cli import Parser
args = Parser(prog="child").parse_args(sys.argv[1:])
print(jax.jit(lambda x: jnp.cos(x) * 2.0 + x)(jnp.arange(5.0)).sum())
"""


def _child(args, env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "MESA_LAB_COMPILE_CACHE"}
    if env_value is not None:
        env["MESA_LAB_COMPILE_CACHE"] = env_value
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_flag_names_the_folder(tmp_path):
    _child(["--compile-cache", str(tmp_path / "cache")], env_value="off")  # the flag wins over the environment
    assert any((tmp_path / "cache").iterdir())


def test_the_environment_names_the_folder_and_off_turns_it_off(tmp_path):
    _child([], env_value=str(tmp_path / "from_env"))
    assert any((tmp_path / "from_env").iterdir())
    _child(["--compile-cache", "off"], env_value=str(tmp_path / "unused"))
    assert not (tmp_path / "unused").exists()


def test_default_folder_is_the_users_cache_folder(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("MESA_LAB_COMPILE_CACHE")
    code = "from lab import compile_cache; print(compile_cache.resolve())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == str(tmp_path / "mesa-lab" / "jax")
