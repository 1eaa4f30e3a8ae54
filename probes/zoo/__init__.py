"""Optimizers with known answers or with hypotheses, audited together: the planted members (``planted``),
learned members distilled from them (``distilled``), the meta-trained scenarios (``scenarios``), the
in-context suite, and the job runner that audits them in worker processes (``jobs``)."""
