"""Plotly figures: pure functions from an analysis (dict) to a figure. No I/O, no HTTP.

`figure_dict` builds the figure as plain JSON-ready data (the page and `/api/.../figure` send it
as is; building `go.Figure` objects would validate every array, ~0.2 s for 2,000 tokens);
`analysis_figure` wraps it in a `go.Figure` for notebooks. Only trace types in plotly.js's
"basic" bundle (scatter) are used: the page loads that 1.2 MB bundle instead of the 4.8 MB full
one (the only offline bundle with WebGL's scattergl; it alone costs about 1.5 s to load in headless
Chromium, most of the 2 s target). A long response is downsampled instead (`kept_points`:
MinMaxLTTB, every divergence and flagged token kept), so the figure holds at most a few
thousand points whatever the length (benchmarks/ui.py).
"""

from __future__ import annotations

import html
import math
from itertools import accumulate
from typing import Any

import numpy as np
import plotly.graph_objects as go
from vrollout.metrics.objectives import QUADRANTS
from vrollout.metrics.signal import lorenz

KL_COLOR = "#c0392b"
LOGPROB_COLOR = "#2c6fbb"
SHARE_COLOR = "#7f8c8d"
DIVERGENCE_COLOR = "#e67e22"
ADVANTAGE_COLOR = "#16a085"
# The Lorenz panel's diagonal: a signal spread evenly over the tokens.
EVEN_SPREAD = {
    "type": "scatter",
    "x": [0, 1],
    "y": [0, 1],
    "name": "even spread",
    "mode": "lines",
    "line": {"color": "#b3bac2", "dash": "dot", "width": 1},
    "hoverinfo": "skip",
    "showlegend": False,
    "xaxis": "x2",
    "yaxis": "y5",
}
MAIN_X = [0.0, 0.68]  # the signal over positions; the Lorenz panel sits to its right
LORENZ_X = [0.8, 1.0]
MARKERS_UP_TO = 400  # beyond this many tokens, lines only: thousands of SVG markers are slow
# A series longer than this is downsampled to about this many points (MinMaxLTTB), plus every
# divergence and flagged token: drawing cost stops growing with the response.
MAX_POINTS = 2000


def _visible(token: str) -> str:
    """A token as hover text: escaped (Plotly renders hover labels as HTML), whitespace shown."""
    return html.escape(token.replace("\n", "↵").replace("\t", "⇥"))


KIND_TEXT = {"surface": "surface (the teacher's continuation re-joins)", "fork": "fork (it does not re-join)"}


def teaching_text(step: dict[str, Any]) -> str:
    """Teachability and the divergence's kind, where the step carries them ("" otherwise)."""
    parts = []
    if step.get("teacher_mass_on_student_topk") is not None:
        parts.append(f"teacher mass on student top-k {step['teacher_mass_on_student_topk']:.3f}")
    if step.get("correction_in_student_topk") is not None:
        parts.append(
            "correction in student top-k" if step["correction_in_student_topk"] else "correction outside it"
        )
    if step.get("divergence_kind"):
        kind = KIND_TEXT[step["divergence_kind"]]
        if step.get("fork_matters") is not None:
            kind += ", matters" if step["fork_matters"] else ", does not matter"
        parts.append(kind)
    return " · ".join(parts)


def hover_text(step: dict[str, Any], role: str | None = None) -> str:
    """The chart's hover: two or three short lines (the strip's details panel holds the top-k
    lists), so that it is never wide enough to be cut off at the right edge."""
    token = _visible(step["token"])
    if not scored(step):
        return f"#{step['position']} <b>{token}</b><br>{html.escape(role or 'context')} token: not scored"
    if step.get("teacher_rank") is None:  # another tokenizer, inside a span: no teacher prediction
        return (
            f"#{step['position']} <b>{token}</b> inside a teacher token<br>"
            f"no teacher prediction at this prefix (compared at span starts)<br>"
            f"log p_T(y) {step['teacher_logprob']:.3f} · log p_S(y) {step['student_logprob']:.3f}"
        )
    mark = "=" if step["agree"] else "≠"
    teaching = teaching_text(step)
    return (
        f"#{step['position']} <b>{token}</b> {mark} teacher <b>{_visible(step['teacher_top1'])}</b><br>"
        f"reverse KL {step['reverse_kl']:.3f} nats · rank {step['teacher_rank']} · "
        f"log p_T(y) {step['teacher_logprob']:.2f}"
        + (f"<br>{html.escape(teaching).replace(' · ', '<br>')}" if teaching else "")
    )


def cumulative_share(values: list[float]) -> list[float]:
    """Running share of the total: 0..1 (all zeros if the total is 0)."""
    total = sum(values)
    if total <= 0:
        return [0.0] * len(values)
    return [c / total for c in accumulate(values)]


def scored(step: dict[str, Any]) -> bool:
    """A token the student wrote (a conversation's context tokens are not; older steps all are)."""
    return step.get("scored", True) is not False


def flagged(steps: list[dict[str, Any]], mine: list[bool] | None = None) -> list[int]:
    """Indices no downsampling may drop: every divergence, fork that matters and uncertain step,
    the largest reverse KL, and both ends of each run of context (unscored) tokens, so that the
    line breaks there instead of joining two turns over it. `mine`: each step's `scored`."""
    mine = [scored(s) for s in steps] if mine is None else mine
    keep = {
        i
        for i, s in enumerate(steps)
        if mine[i] and (not s["agree"] or s.get("fork_matters") or s.get("uncertain"))
    }
    kls = [(s["reverse_kl"], i) for i, s in enumerate(steps) if mine[i] and s["reverse_kl"] is not None]
    if kls:
        keep.add(max(kls)[1])
    last = len(steps) - 1
    for i in range(len(steps)):
        if not mine[i] and (i in (0, last) or mine[i - 1] or mine[i + 1]):
            keep.add(i)
    if steps:
        keep.update((0, last))
    return sorted(keep)


def kept_points(values: list[float | None], must_keep: list[int], n_out: int = MAX_POINTS) -> list[int]:
    """The indices of `values` a figure draws: all of them up to `n_out`; beyond, MinMaxLTTB's
    choice of `n_out` (the shape: peaks and troughs kept), with every index of `must_keep`."""
    if len(values) <= n_out:
        return list(range(len(values)))
    from tsdownsample import MinMaxLTTBDownsampler  # Rust, imported on the first long figure

    y = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
    chosen = MinMaxLTTBDownsampler().downsample(y, n_out=n_out)
    return sorted(set(chosen.tolist()) | set(must_keep))


def comb(divergent: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Vertical ticks at the divergences, from 0 to each one's reverse KL, as one line broken by
    nulls: x, y, text (its tokens) and customdata (its KL, for the hover at either end)."""
    x: list[Any] = []
    y: list[Any] = []
    text: list[Any] = []
    kl: list[Any] = []
    for s in divergent:
        label = short_label(s, True)
        x += [s["position"], s["position"], None]
        y += [0.0, s["reverse_kl"], None]
        text += [label, label, None]
        kl += [s["reverse_kl"], s["reverse_kl"], None]
    return {"x": x, "y": y, "text": text, "customdata": kl}


def short_label(step: dict[str, Any], mine: bool) -> str:
    """A point's tokens for a long response's hover: the student's, and the teacher's where they
    differ (escaped: Plotly reads it as HTML)."""
    if not mine:
        return f"{_visible(step['token'])} (context, not scored)"
    if step["agree"] or step.get("teacher_rank") is None:
        return _visible(step["token"])
    return f"{_visible(step['token'])} ≠ {_visible(step['teacher_top1'])}"


def roles_of(analysis: dict[str, Any]) -> list[str | None]:
    """Each message's role, by index in the line's conversation (empty for a single turn)."""
    trajectory = analysis.get("trajectory") or {}
    messages = trajectory.get("conversation") or []
    return [m.get("role") if isinstance(m, dict) else None for m in messages]


def role_of(step: dict[str, Any], roles: list[str | None]) -> str | None:
    turn = step.get("turn")
    return roles[turn] if isinstance(turn, int) and 0 <= turn < len(roles) else None


def figure_dict(analysis: dict[str, Any]) -> dict[str, Any]:
    """The signal over token position: reverse KL (with divergences and the cumulative share of
    the total on a second axis) above, the teacher's log-prob of the student's token below.
    Context tokens (`scored: false`) are gaps; beyond MAX_POINTS tokens each series is
    downsampled, every divergence and flagged token kept (`kept_points`)."""
    steps = analysis["steps"]
    roles = roles_of(analysis)
    mine = [scored(s) for s in steps]
    kl = [s["reverse_kl"] if m else None for s, m in zip(steps, mine, strict=True)]
    logprob = [s["teacher_logprob"] if m else None for s, m in zip(steps, mine, strict=True)]
    must = flagged(steps, mine)
    on_kl, on_logprob = kept_points(kl, must), kept_points(logprob, must)
    divergent = [s for s, m in zip(steps, mine, strict=True) if m and not s["agree"]]
    share = cumulative_share([v or 0.0 for v in kl])
    mode = "lines+markers" if len(steps) <= MARKERS_UP_TO else "lines"
    kl_trace = {
        "type": "scatter",
        "x": [steps[i]["position"] for i in on_kl],
        "y": [kl[i] for i in on_kl],
        "name": "reverse KL (nats)",
        "mode": mode,
        "line": {"color": KL_COLOR, "width": 1},
        "marker": {"size": 4, "color": KL_COLOR},
        "xaxis": "x",
        "yaxis": "y",
    }
    divergence_trace = {
        "type": "scatter",
        "x": [s["position"] for s in divergent],
        "y": [s["reverse_kl"] for s in divergent],
        "name": "divergence (teacher top-1 ≠ token)",
        "mode": "markers",
        "marker": {"symbol": "x", "size": 9, "color": DIVERGENCE_COLOR},
        "xaxis": "x",
        "yaxis": "y",
    }
    if len(steps) <= MAX_POINTS:
        kl_trace |= {
            "hovertext": [hover_text(steps[i], role_of(steps[i], roles)) for i in on_kl],
            "hoverinfo": "text",
        }
        divergence_trace |= {"hovertext": [hover_text(s) for s in divergent], "hoverinfo": "text"}
    else:
        # A long response: each point's tokens only, in a template (a full hover text per point
        # was most of a 32,000-token page's figure); the strip's details panel has the rest.
        kl_trace |= {
            "text": [short_label(steps[i], mine[i]) for i in on_kl],
            "hovertemplate": "#%{x} %{text}<br>reverse KL %{y:.3f} nats<extra></extra>",
        }
        # Every divergence as a tick from 0 to its KL, all in one path: thousands of SVG markers
        # (one element each) were most of a long page's nodes and drawing time.
        divergence_trace |= comb(divergent) | {
            "mode": "lines",
            "line": {"color": DIVERGENCE_COLOR, "width": 1.5},
            "hovertemplate": "#%{x} %{text}<br>divergence: reverse KL %{customdata:.3f} nats<extra></extra>",
        }
        del divergence_trace["marker"]
    data = [
        kl_trace,
        divergence_trace,
        {
            "type": "scatter",
            "x": [steps[i]["position"] for i in on_kl],
            "y": [share[i] for i in on_kl],
            "name": "cumulative share of total KL",
            "mode": "lines",
            "line": {"color": SHARE_COLOR, "dash": "dot", "width": 1.5},
            "hovertemplate": "%{y:.0%} of the total by #%{x}<extra></extra>",
            "xaxis": "x",
            "yaxis": "y2",
        },
        {
            "type": "scatter",
            "x": [steps[i]["position"] for i in on_logprob],
            "y": [logprob[i] for i in on_logprob],
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
        # The legend has a band of its own below the x axis (as report/chart.py's figures): at
        # 800 px it wraps there instead of covering the KL peak.
        "margin": {"l": 60, "r": 60, "t": 30, "b": 110},
        "hovermode": "closest",
        "hoverlabel": {
            "bgcolor": "white",
            "bordercolor": "#8a96a3",
            "font": {"size": 12, "color": "#1d2733"},
            "align": "left",
        },
        "legend": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
        "template": {"layout": {"plot_bgcolor": "white", "paper_bgcolor": "white"}},
        "clickmode": "event",
        "xaxis": {
            "anchor": "y3",
            "domain": MAIN_X,
            "title": {"text": "token position in the response"},
            "gridcolor": "#eef0f3",
            "zeroline": False,
            **token_ticks(steps),
        },
        "yaxis": {
            "anchor": "x",
            "domain": [0.44, 1.0],
            "title": {"text": "reverse KL (nats)"},
            "rangemode": "tozero",
            "gridcolor": "#eef0f3",
        },
        "yaxis2": {
            "anchor": "x",
            "overlaying": "y",
            "side": "right",
            "range": [0, 1.02],
            "tickformat": ".0%",
            "dtick": 0.25,
            "showgrid": False,
            "title": {"text": "cumulative share"},
        },
        "yaxis3": {
            "anchor": "x",
            "domain": [0.0, 0.38],
            "title": {"text": "teacher log p(y)"},
            "gridcolor": "#eef0f3",
        },
    }
    if analysis.get("recovery"):
        add_recovery(data, layout, analysis["recovery"])
    add_lorenz(data, layout, [s for s, m in zip(steps, mine, strict=True) if m])
    return {"data": data, "layout": layout}


TICKS_WITH_TEXT_UP_TO = (
    40  # a token's text fits under its tick up to about this many; beyond, the page sets them as you zoom
)


def token_ticks(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The x axis of a short response: each token's text under its position (escaped: Plotly
    draws tick text as HTML). A longer one gets numbers, and the page puts the text of the
    tokens in view once zoomed in (static/analysis.js)."""
    if not steps or len(steps) > TICKS_WITH_TEXT_UP_TO:
        return {}
    return {
        "tickmode": "array",
        "tickvals": [s["position"] for s in steps],
        "ticktext": [f"{_visible(s['token'])[:8]}" for s in steps],
        "tickangle": -60,
        "tickfont": {"size": 10},
    }


def add_lorenz(data: list[dict[str, Any]], layout: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """A panel beside the reverse KL: the Lorenz curves of the reverse KL and of |advantage|
    (metrics/signal.py `lorenz`): the share of the total (y) carried by the largest share of tokens
    (x). The diagonal is a signal spread evenly; the higher the curve, the fewer tokens carry it."""
    layout["xaxis2"] = {
        "domain": LORENZ_X,
        "anchor": "y5",
        "range": [0, 1],
        "tickformat": ".0%",
        "dtick": 0.25,
        "title": {"text": "largest share of tokens"},
        "gridcolor": "#eef0f3",
    }
    layout["yaxis5"] = {
        "domain": layout["yaxis"]["domain"],
        "anchor": "x2",
        "range": [0, 1.02],
        "tickformat": ".0%",
        "dtick": 0.25,
        "gridcolor": "#eef0f3",
    }  # no title: the cumulative share's title sits just left of it; the annotation says it
    curves = [
        (curve, name, color)
        for values, name, color in (
            ([s["reverse_kl"] for s in steps], "Lorenz: reverse KL", KL_COLOR),
            ([abs(s["advantage"]) for s in steps], "Lorenz: |advantage|", ADVANTAGE_COLOR),
        )
        if (curve := lorenz(values)) is not None  # None: no signal to share out
    ]
    title = {
        "x": 0.0, "y": 1.0, "xref": "x2", "yref": "y5", "xanchor": "left", "yanchor": "bottom",
        "showarrow": False, "text": "Lorenz: share of the signal on the top tokens", "font": {"size": 11},
    }  # fmt: skip
    layout["annotations"] = [*layout.get("annotations", []), title]
    if curves:
        data.append(dict(EVEN_SPREAD))
    else:
        note = {"x": 0.5, "y": 0.5, "xref": "x2", "yref": "y5", "showarrow": False, "text": "no signal"}
        layout["annotations"].append(note)
    for curve, name, color in curves:
        data.append(
            {
                "type": "scatter",
                "x": curve["x"],
                "y": curve["y"],
                "name": name,
                "mode": "lines",
                "line": {"color": color, "width": 1.5},
                "hovertemplate": f"{name[8:]}: the top %{{x:.0%}} of tokens carry %{{y:.1%}}<extra></extra>",
                "xaxis": "x2",
                "yaxis": "y5",
            }
        )


def add_recovery(data: list[dict[str, Any]], layout: dict[str, Any], rec: dict[str, Any]) -> None:
    """A third row: from which prefixes the teacher, taking over, reaches the reference answer."""
    layout["height"] = 660
    layout["margin"] = {**layout["margin"], "t": 60}  # room for a legend of two rows
    layout["legend"] = {**layout["legend"], "y": 1.12}
    layout["yaxis"]["domain"] = [0.52, 1.0]  # the Lorenz panel (added after) takes the same
    layout["yaxis3"]["domain"] = [0.25, 0.46]
    layout["yaxis4"] = {
        "anchor": "x",
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


# TIP's quadrants (docs/objectives.md): the two "useful" ones warm, the others cool.
QUADRANT_COLORS = {
    "high_entropy_high_divergence": "#c0392b",
    "high_entropy_low_divergence": "#e67e22",
    "low_entropy_high_divergence": "#8e44ad",
    "low_entropy_low_divergence": "#95a5a6",
}


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def quadrant_figure(analysis: dict[str, Any]) -> dict[str, Any] | None:
    """TIP's quadrants as a scatter: each step at (student entropy, exact reverse KL), coloured
    by its quadrant (high = strictly above the threshold, as `summary.quadrants` counts them),
    the thresholds as dashed lines, each quadrant's share of tokens and of signal in its legend
    name. None where the analysis has no quadrants or its steps no student entropy."""
    quads = analysis.get("summary", {}).get("quadrants")
    steps = [s for s in analysis["steps"] if scored(s)]
    if not quads or not steps or any(s.get("student_entropy") is None for s in steps):
        return None
    h, d = quads["entropy_threshold"], quads["divergence_threshold"]
    if h is None or d is None:
        return None
    placed: dict[str, list[dict[str, Any]]] = {q: [] for q in QUADRANTS}
    for step in thinned(steps):
        high_e, high_d = step["student_entropy"] > h, step["reverse_kl"] > d
        placed[f"{'high' if high_e else 'low'}_entropy_{'high' if high_d else 'low'}_divergence"].append(step)
    data = []
    for q in QUADRANTS:
        share = quads.get(q) or {}
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [s["student_entropy"] for s in placed[q]],
                "y": [s["reverse_kl"] for s in placed[q]],
                "name": f"{q.replace('_', ' ')}: {_share(share.get('tokens'))} of tokens, "
                f"{_share(share.get('signal'))} of signal",
                "marker": {"size": 6, "color": QUADRANT_COLORS[q], "opacity": 0.8},
                "hovertext": [
                    f"<b>#{s['position']} {_visible(s['token'])}</b><br>"
                    f"student entropy {s['student_entropy']:.3f} · reverse KL {s['reverse_kl']:.3f}"
                    for s in placed[q]
                ],
                "hoverinfo": "text",
            }
        )
    threshold = {"color": "#34495e", "width": 1, "dash": "dash"}
    layout = {
        "height": 380,
        "margin": {"t": 30, "r": 20, "b": 50, "l": 60},
        "xaxis": {"title": {"text": "student entropy (nats)"}, "zeroline": False},
        "yaxis": {"title": {"text": "reverse KL (nats)"}, "zeroline": False},
        "legend": {"orientation": "h", "y": -0.25},
        "hovermode": "closest",
        "shapes": [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": h,
                "x1": h,
                "y0": 0,
                "y1": 1,
                "line": threshold,
            },
            {
                "type": "line",
                "xref": "paper",
                "yref": "y",
                "x0": 0,
                "x1": 1,
                "y0": d,
                "y1": d,
                "line": threshold,
            },
        ],
    }
    return {"data": data, "layout": layout}


def thinned(steps: list[dict[str, Any]], n_out: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most about `n_out` steps for a scatter of every token: every k-th, plus the
    divergences and the largest reverse KLs (the points a reader looks for)."""
    if len(steps) <= n_out:
        return steps
    every = math.ceil(len(steps) / n_out)
    top = {id(s) for s in sorted(steps, key=lambda s: s["reverse_kl"], reverse=True)[: n_out // 10]}
    return [s for i, s in enumerate(steps) if i % every == 0 or not s["agree"] or id(s) in top]


def analysis_figure(analysis: dict[str, Any]) -> go.Figure:
    """The same figure as a `go.Figure`, for notebooks."""
    return go.Figure(figure_dict(analysis))
