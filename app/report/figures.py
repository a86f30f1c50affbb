"""Plotly figures: pure functions from an analysis (dict) to a figure. No I/O, no HTTP.

`figure_dict` builds the figure as plain JSON-ready data (the page and `/api/.../figure` send it
as is; building `go.Figure` objects would validate every array, ~0.2 s for 2,000 tokens);
`analysis_figure` wraps it in a `go.Figure` for notebooks. Only trace types in plotly.js's
"basic" bundle (scatter) are used: the page loads that 1.2 MB bundle instead of the 4.8 MB full
one, which is most of what makes a 2,000-token analysis interactive in under 2 s
(benchmarks/ui.py).
"""

from __future__ import annotations

import html
import math
from itertools import accumulate
from typing import Any

import plotly.graph_objects as go

KL_COLOR = "#c0392b"
LOGPROB_COLOR = "#2c6fbb"
SHARE_COLOR = "#7f8c8d"
DIVERGENCE_COLOR = "#e67e22"
MARKERS_UP_TO = 400  # beyond this many tokens, lines only: thousands of SVG markers are slow


def _visible(token: str) -> str:
    """A token as hover text: escaped (Plotly renders hover labels as HTML), whitespace shown."""
    return html.escape(token.replace("\n", "↵").replace("\t", "⇥"))


def _alternatives(topk: list[dict[str, Any]]) -> str:
    return "<br>".join(f"&nbsp;&nbsp;{_visible(t['token'])}  {math.exp(t['logprob']):.3f}" for t in topk[:5])


def hover_text(step: dict[str, Any]) -> str:
    mark = "=" if step["agree"] else "≠"
    return (
        f"<b>#{step['position']} {_visible(step['token'])}</b> {mark} teacher "
        f"<b>{_visible(step['teacher_top1'])}</b><br>"
        f"reverse KL {step['reverse_kl']:.3f} nats · rank {step['teacher_rank']}<br>"
        f"log p_T(y) {step['teacher_logprob']:.3f} · log p_S(y) {step['student_logprob']:.3f}<br>"
        f"teacher top-k:<br>{_alternatives(step['teacher_topk'])}<br>"
        f"student top-k:<br>{_alternatives(step['student_topk'])}"
    )


def cumulative_share(values: list[float]) -> list[float]:
    """Running share of the total: 0..1 (all zeros if the total is 0)."""
    total = sum(values)
    if total <= 0:
        return [0.0] * len(values)
    return [c / total for c in accumulate(values)]


def figure_dict(analysis: dict[str, Any]) -> dict[str, Any]:
    """The signal over token position: reverse KL (with divergences and the cumulative share of
    the total on a second axis) above, the teacher's log-prob of the student's token below."""
    steps = analysis["steps"]
    x = [s["position"] for s in steps]
    kl = [s["reverse_kl"] for s in steps]
    divergent = [s for s in steps if not s["agree"]]
    mode = "lines+markers" if len(steps) <= MARKERS_UP_TO else "lines"
    data = [
        {
            "type": "scatter",
            "x": x,
            "y": kl,
            "name": "reverse KL (nats)",
            "mode": mode,
            "line": {"color": KL_COLOR, "width": 1},
            "marker": {"size": 4, "color": KL_COLOR},
            "hovertext": [hover_text(s) for s in steps],
            "hoverinfo": "text",
            "xaxis": "x",
            "yaxis": "y",
        },
        {
            "type": "scatter",
            "x": [s["position"] for s in divergent],
            "y": [s["reverse_kl"] for s in divergent],
            "name": "divergence (teacher top-1 ≠ token)",
            "mode": "markers",
            "marker": {"symbol": "x", "size": 9, "color": DIVERGENCE_COLOR},
            "hovertext": [hover_text(s) for s in divergent],
            "hoverinfo": "text",
            "xaxis": "x",
            "yaxis": "y",
        },
        {
            "type": "scatter",
            "x": x,
            "y": cumulative_share(kl),
            "name": "cumulative share of total KL",
            "mode": "lines",
            "line": {"color": SHARE_COLOR, "dash": "dot", "width": 1.5},
            "hovertemplate": "%{y:.0%} of the total by #%{x}<extra></extra>",
            "xaxis": "x",
            "yaxis": "y2",
        },
        {
            "type": "scatter",
            "x": x,
            "y": [s["teacher_logprob"] for s in steps],
            "name": "teacher log-prob of the token",
            "mode": mode,
            "line": {"color": LOGPROB_COLOR, "width": 1},
            "marker": {"size": 4, "color": LOGPROB_COLOR},
            # The full hover text lives on the KL trace; one copy keeps the page light.
            "hovertemplate": "#%{x}: teacher log p(y) = %{y:.3f}<extra></extra>",
            "xaxis": "x",
            "yaxis": "y3",
        },
    ]
    layout = {
        "height": 520,
        "margin": {"l": 60, "r": 60, "t": 30, "b": 50},
        "hovermode": "closest",
        "legend": {"orientation": "h", "y": 1.1, "x": 0},
        "template": {"layout": {"plot_bgcolor": "white", "paper_bgcolor": "white"}},
        "clickmode": "event",
        "xaxis": {
            "anchor": "y3",
            "title": {"text": "token position in the response"},
            "gridcolor": "#eef0f3",
            "zeroline": False,
        },
        "yaxis": {
            "domain": [0.44, 1.0],
            "title": {"text": "reverse KL (nats)"},
            "rangemode": "tozero",
            "gridcolor": "#eef0f3",
        },
        "yaxis2": {
            "overlaying": "y",
            "side": "right",
            "range": [0, 1.02],
            "tickformat": ".0%",
            "dtick": 0.25,
            "showgrid": False,
            "title": {"text": "cumulative share"},
        },
        "yaxis3": {
            "domain": [0.0, 0.38],
            "title": {"text": "teacher log p(y)"},
            "gridcolor": "#eef0f3",
        },
    }
    if analysis.get("recovery"):
        add_recovery(data, layout, analysis["recovery"])
    return {"data": data, "layout": layout}


def add_recovery(data: list[dict[str, Any]], layout: dict[str, Any], rec: dict[str, Any]) -> None:
    """A third row: from which prefixes the teacher, taking over, reaches the reference answer."""
    layout["height"] = 660
    layout["margin"] = {**layout["margin"], "t": 60}  # room for a legend of two rows
    layout["legend"] = {**layout["legend"], "y": 1.12}
    layout["yaxis"]["domain"] = [0.52, 1.0]
    layout["yaxis3"]["domain"] = [0.25, 0.46]
    layout["yaxis4"] = {
        "domain": [0.0, 0.17],
        "range": [-0.5, 1.5],
        "tickvals": [0, 1],
        "ticktext": ["fails", "succeeds"],
        "title": {"text": "teacher from here"},
        "gridcolor": "#eef0f3",
    }
    for success, name, color, symbol in (
        (True, "teacher reaches the answer from this prefix", "#27ae60", "circle"),
        (False, "teacher cannot reach it from here", "#8e44ad", "x"),
    ):
        points = [p for p in rec["points"] if p["success"] is success]
        data.append(
            {
                "type": "scatter",
                "x": [p["position"] for p in points],
                "y": [1 if success else 0] * len(points),
                "name": name,
                "mode": "markers",
                "marker": {"size": 7, "color": color, "symbol": symbol},
                "hovertext": [
                    f"from #{p['position']}: teacher continues {_visible(p['continuation'])}" for p in points
                ],
                "hoverinfo": "text",
                "xaxis": "x",
                "yaxis": "y4",
            }
        )
    last = rec["last_recoverable"]
    if last is not None:
        layout["shapes"] = [
            {
                "type": "line", "xref": "x", "yref": "paper", "x0": last + 0.5, "x1": last + 0.5,
                "y0": 0, "y1": 1, "line": {"color": "#27ae60", "width": 1.5},
            }
        ]  # fmt: skip
        layout["annotations"] = [
            {
                "x": last + 0.5, "xref": "x", "y": 1.0, "yref": "paper", "xanchor": "left",
                "text": " last recoverable", "showarrow": False, "font": {"color": "#27ae60", "size": 11},
            }
        ]  # fmt: skip
    layout["xaxis"]["anchor"] = "y4"


def analysis_figure(analysis: dict[str, Any]) -> go.Figure:
    """The same figure as a `go.Figure`, for notebooks."""
    return go.Figure(figure_dict(analysis))
