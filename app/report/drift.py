"""Drift across training steps: when lines carry a `step` (a training step or a checkpoint name),
one row per step of how the teacher's signal looks there (docs/metrics.md, "Drift across steps"),
and its Plotly views. Built from digests (`pipeline.digest.digest`) in one pass, a few numbers per
trajectory, so a large job's table is cheap. Pure functions: no database, no HTTP.
"""

from __future__ import annotations

import csv
import html
import io
import re
import statistics
from collections.abc import Iterable
from typing import Any

from vrollout.report.chart import chart_layout
from vrollout.report.tables import csv_cell

DRIFT_COLUMNS = (
    "step", "trajectories", "tokens", "tokens_mean", "agreement_rate", "reverse_kl_mean",
    "reverse_kl_share_at_divergences", "diverged_share", "first_divergence_mean",
    "first_divergence_median", "verdicts", "correct_share", "score_mean",
)  # fmt: skip
INTEGER = re.compile(r"-?\d+")


class _Step:
    """What the drift row of one step needs, added up one digest at a time."""

    def __init__(self, step: int | str) -> None:
        self.step = step
        self.trajectories = self.tokens = self.divergences = self.verdicts = self.right = 0
        self.kl_total = self.kl_at_divergences = 0.0
        self.firsts: list[int] = []
        self.scores: list[float] = []

    def add(self, d: dict[str, Any]) -> None:
        self.trajectories += 1
        self.tokens += d["tokens"]
        self.divergences += d["divergences"]
        self.kl_total += d["reverse_kl_total"]
        self.kl_at_divergences += d.get("reverse_kl_at_divergences") or 0.0
        if d["first_divergence"] is not None:
            self.firsts.append(d["first_divergence"])
        if d.get("correct") is not None:
            self.verdicts += 1
            self.right += bool(d["correct"])
        if d.get("score") is not None:
            self.scores.append(d["score"])

    def row(self, step: int | str) -> dict[str, Any]:
        def share(top: float, bottom: float) -> float | None:
            return top / bottom if bottom else None

        return {
            "step": step,
            "trajectories": self.trajectories,
            "tokens": self.tokens,
            "tokens_mean": self.tokens / self.trajectories,
            "agreement_rate": None if not self.tokens else 1 - self.divergences / self.tokens,
            "reverse_kl_mean": share(self.kl_total, self.tokens),
            "reverse_kl_share_at_divergences": share(self.kl_at_divergences, self.kl_total),
            "diverged_share": len(self.firsts) / self.trajectories,
            "first_divergence_mean": statistics.fmean(self.firsts) if self.firsts else None,
            "first_divergence_median": statistics.median(self.firsts) if self.firsts else None,
            "verdicts": self.verdicts,
            "correct_share": share(self.right, self.verdicts),
            "score_mean": statistics.fmean(self.scores) if self.scores else None,
        }


class Drift:
    """The drift table, added up one digest at a time (`figures_of` feeds it in its own pass)."""

    def __init__(self) -> None:
        self.steps: dict[str, _Step] = {}  # by the step as text: 5 and "5" are one step

    def add(self, d: dict[str, Any]) -> None:
        step = d.get("step")
        if step is None:
            return  # a line without a step is in the other views, not in the drift
        key = str(step)
        if key not in self.steps:
            self.steps[key] = _Step(step)
        self.steps[key].add(d)

    def rows(self) -> list[dict[str, Any]]:
        """One row per step: by number when every step is an integer (or its digits), else in
        the order the steps first appear in the job's lines."""
        if all(INTEGER.fullmatch(key) for key in self.steps):
            return [self.steps[k].row(int(k)) for k in sorted(self.steps, key=int)]
        return [s.row(s.step) for s in self.steps.values()]


def drift_rows(digests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drift table of a job (empty when no line carries a step)."""
    drift = Drift()
    for d in digests:
        drift.add(d)
    return drift.rows()


def drift_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DRIFT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(row[k]) for k in DRIFT_COLUMNS})  # a step name may look like a formula
    return out.getvalue()


# The views: figure key -> (title, y axis title, y axis format, [(column, trace name, colour)]).
DRIFT_FIGURES = {
    "drift_agreement": (
        "across steps: agreement, correctness, KL at divergences", "share", ".0%",
        [
            ("agreement_rate", "agreement rate", "#2c6fbb"),
            ("correct_share", "share correct", "#27ae60"),
            ("reverse_kl_share_at_divergences", "share of reverse KL at divergences", "#c0392b"),
        ],
    ),
    "drift_reverse_kl": (
        "across steps: reverse KL per token", "reverse KL per token (nats)", "",
        [("reverse_kl_mean", "reverse KL per token", "#8e44ad")],
    ),
    "drift_length": (
        "across steps: length and first divergence", "tokens", "",
        [
            ("tokens_mean", "mean response length", "#7f8c8d"),
            ("first_divergence_median", "median first divergence", "#d35400"),
        ],
    ),
}  # fmt: skip


def drift_figures(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lines over the steps (none when no line carries a step); a trace whose values are all
    null (e.g. correctness without verdicts) is left out. The steps are categories, in the
    table's order: a training step is a label (never 1.5), and checkpoints sit evenly apart."""
    if not rows:
        return {}
    # A step name is the line's own text: escaped, as Plotly draws tick labels and hover text as
    # HTML (a `<b>` or `<a href>` in it would be bold text or a link on the job page). Numbers
    # go as text too: a category axis of numbers would still be read as numbers by Plotly.
    x = [html.escape(str(r["step"])) for r in rows]
    figures = {}
    for key, (title, y_title, tick, traces) in DRIFT_FIGURES.items():
        data = [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": x,
                "y": [r[column] for r in rows],
                "line": {"color": color},
            }
            for column, name, color in traces
            if any(r[column] is not None for r in rows)
        ]
        figures[key] = {
            "data": data,
            "layout": chart_layout(
                title,
                "training step",
                y_title,
                xaxis={"type": "category"},
                yaxis={"tickformat": tick, **({"range": [0, 1]} if tick else {"rangemode": "tozero"})},
            ),
        }
    return figures
