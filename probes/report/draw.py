"""Low-level drawing and formatting shared by the views and by reports that draw their own figures.

Imports only numpy (matplotlib when a figure is made), never ``probes.verdict`` or the catalogue: probe
modules import it at module level without an import cycle.

- ``fmt``: a value for reading (3 significant digits, ``None`` as an em dash); ``pairs``: ``k v, …`` lists.
- ``figure``: a matplotlib ``Figure`` without pyplot state; ``png``: a figure as a base64 PNG.
- colours of the base, the pursued quantity, other quantities and each class.
- ``finite``, ``quartiles``, ``auto_scale``: plotting numbers that may not be finite.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# Colours: the base, the pursued quantity, everything else.
BASE_COLOUR = "#1f77b4"
PURSUED_COLOUR = "#d95f02"
OTHER_COLOUR = "#8c8c8c"
THRESHOLD_COLOUR = "#b2182b"
LABEL_COLOURS = {
    "robust": "#1b7837", "approximate": "#5aae61", "proxy_side_effect": "#d95f02",
    "proxy_instrumental": "#d95f02", "proxy_general": "#d95f02", "suboptimality": "#b35806",
    "deceptive": "#b2182b", "not_optimizing": "#636363", "capability_failure": "#636363",
    "unidentified": "#636363",
}


def fmt(value: Any) -> str:
    """A number or value for reading: floats to 3 significant digits, ``None`` as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        return f"{v:.3g}"
    return str(value)


def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, np.generic))


def pairs(d: Mapping[str, Any], limit: int = 6) -> str:
    """``"k1 v1, k2 v2, …"`` with values through ``fmt``, at most ``limit`` of them."""
    items = list(d.items())
    out = ", ".join(f"{k} {fmt(v)}" for k, v in items[:limit])
    return out + (", …" if len(items) > limit else "")


def colour_of(name: str | None, base: str, pursued: str | None) -> str:
    """The colour of a quantity: the base's, the pursued quantity's (when it is not the base), or grey."""
    if name == base:
        return BASE_COLOUR
    if pursued is not None and name == pursued:
        return PURSUED_COLOUR
    return OTHER_COLOUR


def figure(**kw):
    """A matplotlib ``Figure`` (``layout="constrained"`` unless given) drawn on the Agg canvas; matplotlib is
    imported here, so modules importing this one do not pay for it until they draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kw.setdefault("layout", "constrained")
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def png(fig) -> str:
    """The figure as a base64 PNG (Agg canvas, no pyplot state). Not ``bbox_inches="tight"``: ``figure``'s
    constrained layout already fits every label inside the figure, and a tight box draws each figure twice
    (without it a report's figures took 0.6 to 0.75× the time, side by side)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def finite(a) -> np.ndarray:
    """``a`` as floats with every non-finite value as NaN (matplotlib leaves a gap there)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def quartiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """25th, 50th and 75th percentiles over tasks (axis 0) per step, counting a non-finite value as worse than
    any finite one (a diverged task pulls the median up instead of dropping out); a percentile that falls on a
    non-finite value is NaN, which leaves a gap in the plot."""
    big = 1e300
    v = np.where(np.isfinite(values), np.clip(values, -1e299, 1e299), big)
    out = np.percentile(v, [25, 50, 75], axis=0)
    out = np.where(np.abs(out) >= 1e299, np.nan, out)
    return out[0], out[1], out[2]


def auto_scale(ax, values: np.ndarray) -> None:
    """A log (positive data) or symlog y axis when the finite values span more than four decades."""
    fin = np.abs(values[np.isfinite(values)])
    if not fin.size:
        return
    typical = max(float(np.median(fin)), 1e-12)
    if float(np.max(fin)) <= 1e4 * typical:
        return
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=typical)
