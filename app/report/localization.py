"""Error localization as a dataset view: from the analyses of localization lines to the metrics
table, the predictions, Plotly figures and the CLI's folder. The job page and `vrollout
localize` both call `localization_result`. No HTTP; the figures are plain JSON-ready dicts
(`report.figures`), drawn with plotly.js's basic bundle (scatter, bar).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory
from vrollout.metrics.localization import SCORERS, TOKEN_SCORERS, localization_of, problem_key, score_analysis
from vrollout.metrics.localization_eval import METRICS, Setup, localization_metrics
from vrollout.report.pages import standalone_assets, template_env
from vrollout.report.steps_overlay import cut_text

if TYPE_CHECKING:
    from vrollout.config import Settings

POINT_COLOR = "rgba(44, 111, 187, 0.35)"
MEAN_COLOR = "#c0392b"
CORRECT_COLOR = "#7f8c8d"
BEST_COLOR = "#1e8449"
WINDOW = 6  # steps shown either side of the label in the score-by-step figures
SHOWN_LINES = 300  # lines whose step texts and heat-map rows the page shows (the JSON has all)


@dataclass
class LocalizationResult:
    """metrics.json, predictions.jsonl's rows, and how they were made."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    scorers: list[str]
    setup: Setup
    # The first SHOWN_LINES lines' steps, as the page shows them (cut_text; not in predictions)
    step_texts: list[list[str]] = field(default_factory=list)

    @property
    def best(self) -> str | None:
        """The scorer with the highest cross-validated F1 (the first of equals; None when no
        scorer has an F1 above 0: none found a wrong step, and none is better than another)."""
        scored = [
            (self.metrics[n]["f1"], -i, n)
            for i, n in enumerate(self.scorers)
            if self.metrics[n]["f1"] is not None
        ]
        return max(scored)[2] if scored and max(scored)[0] > 0 else None

    def headline(self) -> str:
        """One line per scorer for the terminal: F1 with its interval, beside the baselines."""
        base = self.metrics["baselines"]
        out = [
            f"{len(self.predictions)} lines, {self.setup.folds}-fold thresholds; F1 [95% interval] "
            f"(chance {_fmt(base['chance']['f1'])}, position-only {_fmt(base['position']['f1'])})"
        ]
        for name in self.scorers:
            m = self.metrics[name]
            lo, hi = m["f1_interval"]
            out.append(f"  {name}: F1 {_fmt(m['f1'])} [{_fmt(lo)}, {_fmt(hi)}], AUROC {_fmt(m['auroc'])}")
        return "\n".join(out)

    def table(self) -> list[dict[str, Any]]:
        """Rows of the page's table: each scorer, then the two baselines."""
        rows = [{"name": name, "what": SCORERS[name], **self.metrics[name]} for name in self.scorers]
        base = self.metrics["baselines"]
        rows.append(
            {"name": "position (baseline)", "what": "the step's index, same folds", **base["position"]}
        )
        chance = {f"{k}_interval": [None, None] for k in METRICS}
        rows.append({"name": "chance (baseline)", "what": "a uniform guess among n+1 answers", **chance,
                     **base["chance"], "threshold": None})  # fmt: skip
        return rows


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def localization_result(
    analyses: Iterable[dict[str, Any]], tokenizer: Any, recovery: bool | None, setup: Setup
) -> LocalizationResult:
    """Score every analysis of a localization line (others are skipped; each is read once and
    only its scores kept) and measure the scorers. `recovery`: include the recovery scorer
    (None: when some line ran recovery)."""
    scorers = [*TOKEN_SCORERS, "recovery_drop"] if recovery is not False else list(TOKEN_SCORERS)
    any_recovery = False
    rows = []
    shown: list[list[str]] = []
    for analysis in analyses:
        found = localization_of(analysis)
        if found is None:
            continue
        steps, label = found
        any_recovery = any_recovery or bool(analysis.get("recovery"))
        if len(shown) < SHOWN_LINES:
            shown.append([cut_text(step) for step in steps])
        rows.append(
            {
                "id": analysis["trajectory"].get("id"),
                "analysis_id": analysis.get("id"),
                "line": (analysis.get("job") or {}).get("line"),
                "label": label,
                "steps": len(steps),
                "problem": problem_key(analysis),
                "scores": score_analysis(analysis, tokenizer, scorers),
            }
        )
    if not rows:
        raise BadTrajectory("no analysed line carries steps and a label")
    if recovery is None and not any_recovery:
        scorers = list(TOKEN_SCORERS)
        for row in rows:
            del row["scores"]["recovery_drop"]
    labels = [r["label"] for r in rows]
    per_scorer = {name: [r["scores"][name] for r in rows] for name in scorers}
    metrics, predicted, folds = localization_metrics(
        labels, [r.pop("problem") for r in rows], per_scorer, setup
    )
    predictions = []
    for i, row in enumerate(rows):
        predictions.append(
            {
                "id": row["id"],
                "line": row["line"],
                "analysis_id": row["analysis_id"],
                "label": row["label"],
                "predicted": {name: predicted[name][i] for name in scorers},
                "scores": row["scores"],
                "position_baseline": predicted["position"][i],
                "fold": folds[i],
            }
        )
    return LocalizationResult(metrics, predictions, scorers, setup, shown)


def heat_map(result: LocalizationResult, name: str) -> dict[str, Any]:
    """One scorer's step scores as a lines × steps grid for the page (the first SHOWN_LINES
    lines): each cell's score, its shade (0..1: the score's rank among all of this scorer's
    scores, so that one outlier does not wash the rest out), whether it is the labelled first
    wrong step and whether the scorer predicted it. Steps past a line's end are absent."""
    shown = result.predictions[:SHOWN_LINES]
    values = sorted(s for p in shown for s in p["scores"][name] if s is not None)
    rank = {v: i for i, v in enumerate(values)}  # the last index of equal values
    top = max(len(values) - 1, 1)
    rows = []
    for p in shown:
        cells = [
            {"score": s, "shade": None if s is None else rank[s] / top,
             "label": j == p["label"], "predicted": j == p["predicted"][name]}
            for j, s in enumerate(p["scores"][name])
        ]  # fmt: skip
        rows.append({"line": p["line"], "id": p["id"], "analysis_id": p.get("analysis_id"),
                     "label": p["label"], "predicted": p["predicted"][name], "cells": cells})  # fmt: skip
    width = max((len(r["cells"]) for r in rows), default=0)
    return {"name": name, "rows": rows, "steps": width, "shown": len(shown), "lines": len(result.predictions)}


def heat_maps(result: LocalizationResult) -> dict[str, dict[str, Any]]:
    return {name: heat_map(result, name) for name in result.scorers}


def score_figure(result: LocalizationResult, name: str) -> dict[str, Any]:
    """One scorer's step scores against the step's distance from the label (lines with an error),
    their mean at each distance, and the mean step score of the correct lines for reference."""
    xs, ys, texts = [], [], []
    by_offset: dict[int, list[float]] = {}
    correct = []
    for p in result.predictions:
        scores = p["scores"][name]
        if p["label"] < 0:
            correct.extend(s for s in scores if s is not None)
            continue
        for j, s in enumerate(scores):
            offset = j - p["label"]
            if s is None or abs(offset) > WINDOW:
                continue
            xs.append(offset)
            ys.append(s)
            texts.append(f"{html.escape(str(p['id'] or p['line']))} step {j}")
            by_offset.setdefault(offset, []).append(s)
    means = sorted((k, sum(v) / len(v)) for k, v in by_offset.items())
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "markers", "x": xs, "y": ys, "text": texts, "name": "a step",
         "marker": {"color": POINT_COLOR, "size": 6}, "hovertemplate": "%{text}: %{y:.3f}<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "x": [k for k, _ in means], "y": [m for _, m in means],
         "name": "mean", "line": {"color": MEAN_COLOR}},
    ]  # fmt: skip
    if correct:
        mean = sum(correct) / len(correct)
        line = {"color": CORRECT_COLOR, "dash": "dash"}
        data.append({"type": "scatter", "mode": "lines", "x": [-WINDOW, WINDOW], "y": [mean, mean],
                     "name": "correct lines' mean", "line": line})  # fmt: skip
    layout = {
        "title": {"text": f"{name}: score by step, relative to the label", "x": 0.01, "xanchor": "left"},
        "xaxis": {"title": {"text": "step − label (0 = the first wrong step)"}, "dtick": 1},
        "yaxis": {"title": {"text": "score"}},
        "margin": {"t": 40, "r": 10, "b": 45, "l": 55},
        "legend": {"orientation": "h", "y": -0.25},
    }
    return {"data": data, "layout": layout}


def f1_figure(result: LocalizationResult) -> dict[str, Any]:
    """F1 of each scorer and the position-only baseline with 95% intervals, as horizontal bars
    (the scorers' names on the y axis, sized to fit: never cut), each bar's F1 written beside it,
    the best scorer in its own colour and named ★; chance as a dashed line."""
    names = [*result.scorers, "position"]
    entries = [result.metrics[n] for n in result.scorers] + [result.metrics["baselines"]["position"]]
    f1 = [e["f1"] or 0.0 for e in entries]
    plus = [(e["f1_interval"][1] or 0.0) - v for e, v in zip(entries, f1, strict=True)]
    minus = [v - (e["f1_interval"][0] or 0.0) for e, v in zip(entries, f1, strict=True)]
    chance = result.metrics["baselines"]["chance"]["f1"] or 0.0
    best = result.best
    labels = [
        f"★ {n} (best)" if n == best else ("position (baseline)" if n == "position" else n) for n in names
    ]
    colors = [BEST_COLOR if n == best else (CORRECT_COLOR if n == "position" else "#2c6fbb") for n in names]
    data = [
        {"type": "bar", "orientation": "h", "y": labels, "x": f1, "name": "F1 (cross-validated)",
         "marker": {"color": colors}, "text": [_fmt(e["f1"]) for e in entries], "textposition": "outside",
         "cliponaxis": False, "hovertemplate": "%{y}: F1 %{x:.3f}<extra></extra>",
         "error_x": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus}},
        {"type": "scatter", "mode": "lines", "x": [chance, chance], "y": [labels[0], labels[-1]],
         "name": f"chance ({_fmt(chance)})", "line": {"color": CORRECT_COLOR, "dash": "dash"}},
    ]  # fmt: skip
    layout = {
        "title": {"text": "F1 with 95% bootstrap intervals", "x": 0.01, "xanchor": "left"},
        "xaxis": {"title": {"text": "F1"}, "range": [0, 1.1], "tickvals": [0, 0.2, 0.4, 0.6, 0.8, 1]},
        "yaxis": {"automargin": True, "autorange": "reversed", "type": "category"},
        "margin": {"t": 40, "r": 20, "b": 45, "l": 10},
        "legend": {"orientation": "h", "y": -0.3},
        "showlegend": True,
    }
    return {"data": data, "layout": layout}


def localization_figures(result: LocalizationResult) -> dict[str, dict[str, Any]]:
    return {"f1": f1_figure(result), **{name: score_figure(result, name) for name in result.scorers}}


def write_folder(
    out: Path,
    name: str,
    errors: Sequence[tuple[int, str]],
    result: LocalizationResult,
    analyzer: Any,
    settings: Settings,
) -> None:
    """metrics.json, predictions.jsonl and a one-file report.html (offline) into `out` (the
    command writes analyses.jsonl there first)."""

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
    with (out / "predictions.jsonl").open("w") as f:
        for row in result.predictions:
            f.write(json.dumps(row) + "\n")
    env = template_env(settings.templates_dir)  # autoescaped, the pages' filters
    inline, csp = standalone_assets(settings.static_dir, "report.js")
    page = env.get_template("localize.html").render(
        name=name,
        result=result,
        errors=errors,
        figures=localization_figures(result),
        heat_maps=heat_maps(result),
        student=analyzer.pair.student.name,
        teacher=analyzer.pair.teacher.name,
        standalone=True,
        csp=csp,
        **inline,
    )
    (out / "report.html").write_text(page)
