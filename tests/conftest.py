"""Test set-up: four fake CPU devices (for the sharding tests) before JAX initialises any backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the suite must not depend on an accelerator

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")  # catch silent broadcasting

import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)
