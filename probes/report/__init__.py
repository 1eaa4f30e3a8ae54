"""The views of verdicts. Each report describes itself (``Report.summary``, ``Report.figures``); the views
iterate over reports and never branch on a probe's name.

- ``draw``: low-level drawing and formatting (``fmt``, ``png``, colours); imports no other part of ``probes``,
  so probe modules can import it.
- ``figures``: traces for figures, the trajectories figure, and what the views ask of each report.
- ``page``: the HTML page of a verdict, the zoo page, the benchmark page, and the report folder (``write_report``).
- ``terminal``: ``rich`` tables of a verdict and of a zoo.

None of these modules imports ``probes.verdict`` at import time (only for type hints, or inside a function):
``probes.verdict`` imports the catalogue, and the catalogue imports ``probes.report.draw``.
"""

from probes.report.draw import LABEL_COLOURS, fmt, png  # noqa: F401
from probes.report.figures import (collect_traces, figure_trajectories, report_panels,  # noqa: F401
                                   report_summary, subject_traces)
from probes.report.page import (note_html, page, panel_html, render_benchmark, render_body, render_html, render_zoo,  # noqa: F401
                                report_html, scenario_intro_html, thresholds_html, write_report, zoo_entry_html,
                                zoo_table_html, REPORT_FILES)
from probes.report.terminal import log_console, progress, terminal_table, zoo_table  # noqa: F401
