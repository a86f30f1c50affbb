"""The dataset's headline table: how little signal each trajectory carries, as a researcher
reports it. Rows are measures of one trajectory (its concentration, agreement, teachability,
surface/fork counts; each distillation objective's total, bias, rank agreement and concentration
against the exact reverse KL; TIP's quadrants), columns are the trajectories taken together (all,
correct, incorrect), and each cell is the median across trajectories with its interquartile range and n.

Pure functions over digests (`pipeline.digest.digest`): no database, no HTTP. One pass keeps a few
numbers per trajectory, so a large job's table is cheap. Renderings: JSON (the route and the
pages), CSV, Markdown and LaTeX (the files to paste into a paper).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vrollout.metrics.objectives import QUADRANTS
from vrollout.schema.analysis import OBJECTIVE_NAMES

NOTE = (
    "Median [interquartile range] across trajectories; (n=…) where fewer trajectories than the "
    "column's have a value. Shares are of each trajectory's own total."
)


@dataclass(frozen=True)
class Measure:
    key: str  # the summary column it reads, unless `value` says otherwise
    label: str
    unit: str  # "share" (shown as a percentage), "number" or "count" (a count per trajectory)
    value: Callable[[dict[str, Any]], float | None] | None = None

    def of(self, digest: dict[str, Any]) -> float | None:
        return self.value(digest) if self.value else digest.get(self.key)


def ratio(top: str, bottom: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    """top / bottom of one digest (None where either is missing or bottom is 0)."""

    def value(d: dict[str, Any]) -> float | None:
        a, b = d.get(top), d.get(bottom)
        return scale * a / b if a is not None and b else None

    return value


MEASURES = (
    Measure("kl_top_1pct", "top 1% of tokens carry (share of reverse KL)", "share"),
    Measure("kl_top_5pct", "top 5% of tokens carry (share of reverse KL)", "share"),
    Measure("kl_tokens_for_80pct", "tokens for 80% of reverse KL (share of tokens)", "share"),
    Measure("kl_gini", "Gini of reverse KL", "number"),
    Measure("abs_advantage_top_5pct", "top 5% of tokens carry (share of |advantage|)", "share"),
    Measure("abs_advantage_tokens_for_80pct", "tokens for 80% of |advantage| (share of tokens)", "share"),
    Measure("abs_advantage_gini", "Gini of |advantage|", "number"),
    Measure("reverse_kl_mean", "reverse KL per token (nats)", "number"),
    Measure("agreement_rate", "agreement rate", "share"),
    Measure(
        "divergences_per_100_tokens", "divergences per 100 tokens", "number",
        ratio("divergences", "tokens", 100.0),
    ),
    Measure(
        "divergences_in_student_topk_share",
        "share of divergences the student could take (teacher top-1 in student top-k)", "share",
        ratio("divergences_in_student_topk", "divergences"),
    ),
    Measure("teacher_mass_on_student_topk_mean", "teacher mass on the student's top-k (token mean)", "share"),
    Measure(
        "surface_share", "share of classified divergences that are surface", "share",
        ratio("divergences_surface", "divergences_classified"),
    ),
    Measure("divergences_surface", "surface divergences per trajectory", "count"),
    Measure("divergences_fork", "forks per trajectory", "count"),
    Measure("forks_that_matter", "forks that matter per trajectory", "count"),
)  # fmt: skip
GROUPS = ("all", "correct", "incorrect")
# One row block per distillation objective (summary.objectives, docs/objectives.md), then TIP's
# quadrants (summary.quadrants): read from the digest's `objectives` and `quadrants`.
OBJECTIVE_FIELDS = (
    ("total", "total (nats)", "number"),
    ("bias", "bias against the exact reverse KL (nats)", "number"),
    ("spearman", "Spearman with the exact reverse KL", "number"),
    ("top5pct_overlap", "share on the exact top 5% of tokens", "share"),
    ("gini", "Gini", "number"),
    ("clipped_share", "share the clip removes", "share"),
)
QUADRANT_FIELDS = (("tokens", "share of tokens", "share"), ("signal", "share of reverse KL", "share"))


def objective_measures(names: Iterable[str]) -> list[Measure]:
    """The rows of each objective in `names`: `<name>_<field>`, read from the digest."""
    return [
        Measure(
            f"{name}_{field}", f"{name}: {label}", unit,
            lambda d, n=name, f=field: ((d.get("objectives") or {}).get(n) or {}).get(f),
        )
        for name in names
        for field, label, unit in OBJECTIVE_FIELDS
    ]  # fmt: skip


def quadrant_measures() -> list[Measure]:
    return [
        Measure(
            f"{q}_{field}", f"TIP {q.replace('_', ' ')}: {label}", unit,
            lambda d, q=q, f=field: ((d.get("quadrants") or {}).get(q) or {}).get(f),
        )
        for q in QUADRANTS
        for field, label, unit in QUADRANT_FIELDS
    ]  # fmt: skip


def segment_value(part: str, field: str) -> Callable[[dict[str, Any]], float | None]:
    """One figure of the thinking or the answer (the digest's `segments`; None without them)."""

    def value(d: dict[str, Any]) -> float | None:
        figures = (d.get("segments") or {}).get(part) or {}
        if field == "divergences_per_100_tokens":
            n, tokens = figures.get("divergences"), figures.get("tokens")
            return 100.0 * n / tokens if n is not None and tokens else None
        return figures.get(field)

    return value


# Thinking apart from the answer (summary.segments, #25): the same figures for each part, rows
# shown only where some trajectory marks its reasoning.
SEGMENT_FIELDS = (
    ("reverse_kl_mean", "reverse KL per token (nats)", "number"),
    ("divergences_per_100_tokens", "divergences per 100 tokens", "number"),
    ("kl_top_5pct", "top 5% of tokens carry (share of reverse KL)", "share"),
    ("divergences_surface", "surface divergences per trajectory", "count"),
    ("divergences_fork", "forks per trajectory", "count"),
)


def segment_measures() -> list[Measure]:
    return [
        Measure(f"{part}_{field}", f"{part}: {label}", unit, segment_value(part, field))
        for part in ("thinking", "answer")
        for field, label, unit in SEGMENT_FIELDS
    ]


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, linear between order statistics (numpy's default)."""
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def cell(values: list[float], unit: str, trajectories: int) -> dict[str, Any]:
    """Median, quartiles and n of one measure over one group, with the text the tables show."""
    if not values:
        return {"n": 0, "median": None, "q1": None, "q3": None, "text": "–"}
    ordered = sorted(values)
    median, q1, q3 = (quantile(ordered, q) for q in (0.5, 0.25, 0.75))
    text = f"{number(median, unit)} [{number(q1, unit, sign=False)}–{number(q3, unit)}]"
    if len(values) < trajectories:
        text += f" (n={len(values)})"
    return {"n": len(values), "median": median, "q1": q1, "q3": q3, "text": text}


def number(x: float, unit: str, sign: bool = True) -> str:
    """A share as a percentage with one decimal (the sign left off a range's lower end); a count's
    median as it is (4, 4.5, 0.75); another number with three significant digits (trailing zeros
    kept), or whole from 100 up."""
    if unit == "share":
        return f"{100 * x:.1f}" + ("%" if sign else "")
    if unit == "count":
        return f"{x:g}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def headline(digests: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The headline table of a dataset. Columns: `all`, then `correct` and `incorrect` when any
    trajectory has a verdict (a reference answer). A measure with no value in any trajectory
    (e.g. surface/fork without continuations) is left out."""
    measures = [*MEASURES, *segment_measures(), *objective_measures(OBJECTIVE_NAMES), *quadrant_measures()]
    values: dict[str, dict[str, list[float]]] = {g: {m.key: [] for m in measures} for g in GROUPS}
    counts = dict.fromkeys(GROUPS, 0)
    for d in digests:
        verdict = d.get("correct")
        groups = ["all"] + ([] if verdict is None else ["correct" if verdict else "incorrect"])
        for g in groups:
            counts[g] += 1
        for m in measures:
            if (v := m.of(d)) is not None:
                for g in groups:
                    values[g][m.key].append(float(v))
    shown = GROUPS if counts["correct"] + counts["incorrect"] else GROUPS[:1]
    rows = [
        {
            "measure": m.key,
            "label": m.label,
            "unit": m.unit,
            "cells": {g: cell(values[g][m.key], m.unit, counts[g]) for g in shown},
        }
        for m in measures
        if values["all"][m.key]
    ]
    return {"groups": [{"name": g, "trajectories": counts[g]} for g in shown], "rows": rows, "note": NOTE}


def heading(group: dict[str, Any]) -> str:
    return f"{group['name']} (n={group['trajectories']})"


def headline_csv(table: dict[str, Any]) -> str:
    """One row per measure: `measure`, `label`, `unit`, then `<group>_n`, `<group>_median`,
    `<group>_q1`, `<group>_q3` for each column group (numbers at full precision)."""
    names = [g["name"] for g in table["groups"]]
    fields = ["measure", "label", "unit"] + [f"{g}_{k}" for g in names for k in ("n", "median", "q1", "q3")]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    for row in table["rows"]:
        flat = {"measure": row["measure"], "label": row["label"], "unit": row["unit"]}
        for g in names:
            flat.update({f"{g}_{k}": row["cells"][g][k] for k in ("n", "median", "q1", "q3")})
        writer.writerow(flat)
    return out.getvalue()


def headline_markdown(table: dict[str, Any]) -> str:
    """A GitHub-flavoured Markdown table, then the note."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [
        line(["measure"] + [heading(g) for g in table["groups"]]),
        "| --- |" + " ---: |" * len(table["groups"]),
    ]
    for row in table["rows"]:
        lines.append(line([row["label"]] + [row["cells"][g["name"]]["text"] for g in table["groups"]]))
    return "\n".join(lines) + f"\n\n{table['note']}\n"


LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "%": r"\%", "&": r"\&", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
    "}": r"\}", "|": r"\textbar{}", "–": "--", "…": r"\dots{}", "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}  # fmt: skip


def latex_text(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def headline_latex(table: dict[str, Any]) -> str:
    """A LaTeX tabular with booktabs rules (`\\usepackage{booktabs}`), then the note as a comment."""
    groups = table["groups"]
    lines = [
        r"\begin{tabular}{l" + "r" * len(groups) + "}",
        r"\toprule",
        " & ".join(["measure"] + [latex_text(heading(g)) for g in groups]) + r" \\",
        r"\midrule",
    ]
    for row in table["rows"]:
        cells = [row["label"]] + [row["cells"][g["name"]]["text"] for g in groups]
        lines.append(" & ".join(latex_text(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"% {latex_text(table['note'])}"]
    return "\n".join(lines) + "\n"


FORMATS = {  # format -> (renderer, media type, file suffix)
    "csv": (headline_csv, "text/csv", "csv"),
    "md": (headline_markdown, "text/markdown", "md"),
    "tex": (headline_latex, "application/x-tex", "tex"),
}
