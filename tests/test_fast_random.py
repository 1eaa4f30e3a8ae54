"""The CPU lowering of threefry installed by ``lab.fast_random`` is the same hash: the known answers of
Threefry-2x32 with 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"; the
Random123 known-answer tests, also in jax's own tests), and the same keys and normal draws in a process
without it."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

import lab
from lab import fast_random

KNOWN_ANSWERS = [  # (key, counter) -> output
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

DRAW = ("import jax, numpy as np; k = jax.random.key(7); "
        "print(np.asarray(jax.jit(lambda k: jax.random.normal(k, (5,)))(jax.random.split(k)[1])).tobytes().hex())")


def test_the_lowering_is_installed_with_lab():
    assert lab.fast_random.INSTALLED and fast_random.install()


def test_known_answers_of_threefry_2x32_20():
    for key, counter, expected in KNOWN_ANSWERS:
        out = jax.jit(threefry_2x32)(jnp.asarray(key, jnp.uint32), jnp.asarray(counter, jnp.uint32))
        assert np.asarray(out).tolist() == list(expected)


def test_same_draws_as_jax_default_lowering():
    without = subprocess.run([sys.executable, "-c", DRAW], capture_output=True, text=True, check=True).stdout
    with_lab = subprocess.run([sys.executable, "-c", "import lab; " + DRAW], capture_output=True, text=True,
                              check=True).stdout
    assert without.strip() and without == with_lab
