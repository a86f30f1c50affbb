"""The layout every dataset figure shares (the job page, the CLI's report.html): a title, both axes
labelled, and the legend in a band of its own below the x axis, so that it never covers data
however narrow the card (one column at 800 px). Pure data for Plotly; no I/O."""

from __future__ import annotations

import math
from typing import Any

HEIGHT = 340
# Room below the plot for the x tick labels and axis title (about 55 px), then the legend's band.
MARGIN = {"l": 64, "r": 20, "t": 44, "b": 100}


def chart_layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """A dataset figure's layout. The legend sits at the bottom of the figure's own box (`yref:
    container`), below the axis title, and wraps there instead of spreading over the plot."""
    xaxis = {"title": {"text": x_title}, "automargin": True, **extra.pop("xaxis", {})}
    yaxis = {"title": {"text": y_title}, "automargin": True, **extra.pop("yaxis", {})}
    return {
        "height": HEIGHT,
        "margin": dict(MARGIN),
        "plot_bgcolor": "white",
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        "legend": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
        "xaxis": xaxis,
        "yaxis": yaxis,
        **extra,
    }


def count_axis(largest: int) -> dict[str, Any]:
    """A y axis of counts: whole-number ticks only (1, 2, 5 x 10^k apart, about five of them),
    from zero."""
    step = 1
    for scale in (10**k for k in range(12)):
        step = next((m * scale for m in (1, 2, 5) if largest / (m * scale) <= 5), 0)
        if step:
            break
    return {"tick0": 0, "dtick": max(1, step), "tickformat": "d", "rangemode": "tozero",
            "range": [0, max(1, math.ceil(largest * 1.08))]}  # fmt: skip
