"""The figures of a pedagogical job's comparison, as Plotly JSON (plain dicts: the page's
plotly.js draws them, `plotly.io.from_json` opens them in a notebook). Built from the summary
and the comparison rows of report/pedagogical.py; a figure with nothing to show (no sweep, no
verdicts) is left out rather than drawn empty."""

from __future__ import annotations

import html
import math
from typing import Any

COLORS = {"correct": "#27ae60", "incorrect": "#c0392b", "no verdict": "#7f8c8d", "all": "#2c6fbb"}
SURPRISAL_BINS = 20
BASE = {
    "height": 320,
    "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
    "plot_bgcolor": "white",
    "legend": {"orientation": "h", "y": -0.25},
}


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    return {
        **BASE,
        "title": {"text": title},
        "xaxis": {"title": {"text": x}},
        "yaxis": {"title": {"text": y}},
        **extra,
    }


def sweep_figure(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate against the mean interventions of each threshold of the sweep."""
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers+text",
                "name": "sweep",
                "x": [r["mean_interventions"] for r in sweep],
                "y": [r["success_rate"] for r in sweep],
                "text": [f"p<{r['threshold']:g}" for r in sweep],
                "textposition": "top center",
                "line": {"color": COLORS["all"]},
            }
        ],
        "layout": _layout(
            "threshold sweep: success vs interventions",
            "mean interventions per rollout",
            "reached the reference",
            yaxis={"title": {"text": "reached the reference"}, "tickformat": ".0%", "range": [0, 1.05]},
        ),
    }


def rescue_figure(rescue: dict[str, Any]) -> dict[str, Any]:
    """The share of the student's failures rescued with at most N interventions."""
    rows = rescue["by_budget"]
    return {
        "data": [
            {
                "type": "bar",
                "name": f"student failures ({rescue['student_failures']})",
                "x": [f"≤ {r['budget']}" for r in rows],
                "y": [r["share"] for r in rows],
                "text": [str(r["rescued"]) for r in rows],
                "textposition": "outside",
                "marker": {"color": COLORS["correct"]},
            }
        ],
        "layout": _layout(
            "student failures rescued, by budget",
            "at most this many interventions",
            "share rescued",
            yaxis={"title": {"text": "share rescued"}, "tickformat": ".0%", "range": [0, 1.05]},
        ),
    }


def scatter_figure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per line: the pedagogical rollout's interventions against OPD's divergences on the
    student's own rollout, coloured by whether the pedagogical rollout succeeded."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        verdict = r["pedagogical_correct"]
        name = "no verdict" if verdict is None else ("correct" if verdict else "incorrect")
        groups.setdefault(name, []).append(r)
    top = max([1, *(max(r["opd_divergences"], r["interventions"]) for r in rows)])
    traces = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": f"pedagogical {name} ({len(members)})",
            "x": [r["opd_divergences"] for r in members],
            "y": [r["interventions"] for r in members],
            "text": [html.escape(str(r["id"])) for r in members],  # the line's id: HTML to Plotly
            "marker": {"color": COLORS[name], "size": 7},
        }
        for name, members in groups.items()
    ]
    diagonal = {
        "type": "scatter",
        "mode": "lines",
        "name": "as many interventions as divergences",
        "x": [0, top],
        "y": [0, top],
        "line": {"color": "#bbb", "dash": "dot"},
    }
    return {
        "data": [*traces, diagonal],
        "layout": _layout(
            "interventions vs OPD divergences, per prompt",
            "OPD divergences (student's own rollout)",
            "interventions (pedagogical rollout)",
        ),
    }


def surprisal_figure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The distribution of the largest surprisal per rollout (−log-prob under the student of
    the most off-policy token the teacher put in), as bars (the bundle has no histogram)."""
    values = [r["max_intervention_surprisal"] for r in rows if r["max_intervention_surprisal"] is not None]
    top = max(values)
    width = max(top, 1e-9) / SURPRISAL_BINS
    counts = [0] * SURPRISAL_BINS
    for v in values:
        counts[min(SURPRISAL_BINS - 1, math.floor(v / width))] += 1
    return {
        "data": [
            {
                "type": "bar",
                "name": f"rollouts with interventions ({len(values)})",
                "x": [(i + 0.5) * width for i in range(SURPRISAL_BINS)],
                "y": counts,
                "width": [width * 0.9] * SURPRISAL_BINS,
                "marker": {"color": COLORS["all"]},
            }
        ],
        "layout": _layout(
            "largest surprisal per rollout",
            "student −log-prob of the substituted token (nats)",
            "rollouts",
        ),
    }


def comparison_figures(summary: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The comparison's figures by key (the page draws each into `fig-<key>`)."""
    figures: dict[str, dict[str, Any]] = {}
    if any(r["success_rate"] is not None for r in summary["sweep"]):
        figures["sweep"] = sweep_figure(summary["sweep"])
    if summary["rescue"]["student_failures"]:
        figures["rescue"] = rescue_figure(summary["rescue"])
    if rows:
        figures["interventions_vs_divergences"] = scatter_figure(rows)
    if any(r["max_intervention_surprisal"] is not None for r in rows):
        figures["surprisal"] = surprisal_figure(rows)
    return figures
