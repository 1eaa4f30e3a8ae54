"""Task families, optimizers (hand-written, learned, in-context) and meta-training.

Importing ``lab`` lowers jax's random-number hash on CPU without loops (``lab.fast_random``): the same bits,
a fraction of the kernels inside the inner scans.
"""

from lab import fast_random as _fast_random  # noqa: F401  (installs the lowering once, at import)
