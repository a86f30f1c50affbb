"""Plotly figures: pure functions from an analysis (dict) to a `go.Figure`. No I/O, no HTTP.

Many points are drawn with WebGL traces (`Scattergl`), so a 2,000-token analysis stays fast.
"""

from __future__ import annotations

import html
import math
from itertools import accumulate
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

KL_COLOR = "#c0392b"
LOGPROB_COLOR = "#2c6fbb"
SHARE_COLOR = "#7f8c8d"
DIVERGENCE_COLOR = "#e67e22"


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


def analysis_figure(analysis: dict[str, Any]) -> go.Figure:
    """The signal over token position: reverse KL (with divergences and the cumulative share of
    the total on a second axis) above, the teacher's log-prob of the student's token below."""
    steps = analysis["steps"]
    x = [s["position"] for s in steps]
    kl = [s["reverse_kl"] for s in steps]
    hover = [hover_text(s) for s in steps]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        row_heights=[0.6, 0.4],
        specs=[[{"secondary_y": True}], [{}]],
    )
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=kl,
            name="reverse KL (nats)",
            mode="lines+markers",
            line={"color": KL_COLOR, "width": 1},
            marker={"size": 4, "color": KL_COLOR},
            hovertext=hover,
            hoverinfo="text",
        ),
        row=1,
        col=1,
    )
    divergent = [s for s in steps if not s["agree"]]
    fig.add_trace(
        go.Scattergl(
            x=[s["position"] for s in divergent],
            y=[s["reverse_kl"] for s in divergent],
            name="divergence (teacher top-1 ≠ token)",
            mode="markers",
            marker={"symbol": "x", "size": 9, "color": DIVERGENCE_COLOR},
            hovertext=[hover_text(s) for s in divergent],
            hoverinfo="text",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=cumulative_share(kl),
            name="cumulative share of total KL",
            mode="lines",
            line={"color": SHARE_COLOR, "dash": "dot", "width": 1.5},
            hovertemplate="%{y:.0%} of the total by #%{x}<extra></extra>",
        ),
        row=1,
        col=1,
        secondary_y=True,
    )
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=[s["teacher_logprob"] for s in steps],
            name="teacher log-prob of the token",
            mode="lines+markers",
            line={"color": LOGPROB_COLOR, "width": 1},
            marker={"size": 4, "color": LOGPROB_COLOR},
            hovertext=hover,
            hoverinfo="text",
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="reverse KL (nats)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(
        title_text="cumulative share", range=[0, 1.02], tickformat=".0%", showgrid=False,
        row=1, col=1, secondary_y=True,
    )  # fmt: skip
    fig.update_yaxes(title_text="teacher log p(y)", row=2, col=1)
    fig.update_xaxes(title_text="token position in the response", row=2, col=1)
    fig.update_layout(
        height=520,
        margin={"l": 60, "r": 60, "t": 30, "b": 50},
        hovermode="closest",
        legend={"orientation": "h", "y": 1.08, "x": 0},
        template="plotly_white",
        clickmode="event",
        uirevision="keep",
    )
    return fig
