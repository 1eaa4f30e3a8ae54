"""Test set-up: four fake CPU devices (for the sharding tests) before JAX initialises any backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the suite must not depend on an accelerator

import tempfile  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
# Many tests compile the same small programs (the tiny run config, evaluations): a compilation cache for
# the session turns the repeats into look-ups.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="lab-jax-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_rank_promotion", "raise")  # catch silent broadcasting

import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)
