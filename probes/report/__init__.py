"""The views of verdicts: self-contained HTML pages with figures, terminal tables, and report folders."""

from probes.report.page import *  # noqa: F401,F403
from probes.report.page import LABEL_COLOURS, _png, fmt  # noqa: F401
