"""Optimizers with known answers or with hypotheses, audited together: the planted members (``planted``),
learned members distilled from them (``distilled``), the meta-trained scenarios (``scenarios``), the
in-context suite, the jobs that audit them (``jobs``), and the worker processes that run jobs (``workers``)."""
