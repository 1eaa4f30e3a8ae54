"""Random numbers inside scans, cheap on CPU, with the same bits.

jax lowers its threefry hash on CPU as a five-trip ``while`` loop (small programs, fast compiles), and on
every other backend as the same twenty rounds written out. Inside the lab's inner ``lax.scan`` every
``jax.random`` call then becomes a loop of its own: the default meta-step of the ``mlp`` family compiled to
about 15,000 kernels on CPU, and compiling it took twice as long as with the rounds written out. ``install``
registers jax's written-out lowering for CPU too. The hash is the same function, so every stream (and every
number the lab has produced) is unchanged; ``tests/test_fast_random.py`` checks the published known answers
of Threefry-2x32-20.

It uses one private name of jax (the written-out lowering rule); if a jax release moves it, ``install``
leaves jax's default in place, which is slower but gives the same numbers.
"""

from __future__ import annotations


def install() -> bool:
    """Lowers threefry on CPU with its rounds written out; ``True`` if installed (idempotent)."""
    try:
        from jax._src.random import threefry2x32 as _threefry
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir

        rule = _threefry._threefry2x32_lowering_rule
    except (ImportError, AttributeError):
        return False
    # Out of line, as jax registers it elsewhere: the twenty rounds are emitted once per program and called.
    mlir.register_lowering(threefry2x32_p, rule, platform="cpu", inline=False)
    return True


INSTALLED = install()
