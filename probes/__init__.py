"""Probes of the objective a learned optimizer pursues, and the verdict that combines them.

- ``subject``: the optimizer and family under audit, with cached traces; typed reports; the probe registry.
- ``trace``: rollouts recorded for probes.
- ``catalogue/``: the probes, one module per kind.
- ``verdict``: ``audit`` runs the probes and ``decide`` names a class of Hubinger et al. 2019.
- ``zoo/``: planted, distilled, meta-trained and in-context members with expected answers, and the job runner.
- ``report/``: HTML pages, figures and terminal tables.
"""
