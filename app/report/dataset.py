"""Dataset views of many analyses: one row per trajectory, one row per step, aggregate figures.

Pure functions from analyses (dicts) to tables and Plotly figure dicts; no I/O, no HTTP.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from vrollout.core.answers import answer_matches

SUMMARY_COLUMNS = (
    "analysis_id", "line", "trajectory_id", "tokens", "agreement_rate", "divergences",
    "first_divergence", "reverse_kl_total", "reverse_kl_mean", "forward_kl_total",
    "advantage_total", "correct", "preview",
)  # fmt: skip
STEP_COLUMNS = (
    "analysis_id", "line", "trajectory_id", "position", "token_id", "token", "student_logprob",
    "teacher_logprob", "advantage", "reverse_kl", "forward_kl", "student_entropy",
    "teacher_entropy", "teacher_top1_id", "teacher_top1", "agree", "teacher_rank",
)  # fmt: skip
GROUP_COLORS = {"all": "#2c6fbb", "correct": "#27ae60", "incorrect": "#c0392b"}


def correct(analysis: dict[str, Any]) -> bool | None:
    """Whether the student's response reaches the line's reference answer (None: no reference)."""
    reference = analysis.get("trajectory", {}).get("reference_answer")
    if not reference:
        return None
    return answer_matches(analysis["response_text"], reference)


def summary_row(analysis: dict[str, Any]) -> dict[str, Any]:
    s = analysis["summary"]
    text = " ".join(analysis["response_text"].split())
    return {
        "analysis_id": analysis["id"],
        "line": analysis.get("job", {}).get("line"),
        "trajectory_id": analysis.get("trajectory", {}).get("id"),
        "tokens": s["tokens"],
        "agreement_rate": s["agreement_rate"],
        "divergences": s["divergences"],
        "first_divergence": s["first_divergence"],
        "reverse_kl_total": s["reverse_kl_total"],
        "reverse_kl_mean": s["reverse_kl_mean"],
        "forward_kl_total": s["forward_kl_total"],
        "advantage_total": s["advantage_total"],
        "correct": correct(analysis),
        "preview": text[:120],
    }


def step_rows(analyses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step of every analysis (pandas-friendly: `pd.DataFrame(rows)`)."""
    rows = []
    for a in analyses:
        head = {
            "analysis_id": a["id"],
            "line": a.get("job", {}).get("line"),
            "trajectory_id": a.get("trajectory", {}).get("id"),
        }
        for s in a["steps"]:
            rows.append({**head, **{k: s[k] for k in STEP_COLUMNS if k in s}})
    return rows


def summaries_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def steps_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in STEP_COLUMNS})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _groups(analyses: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """All analyses, or split by the correctness of the final answer when lines carry one."""
    verdicts = [correct(a) for a in analyses]
    if all(v is None for v in verdicts):
        return {"all": analyses}
    return {
        "correct": [a for a, v in zip(analyses, verdicts, strict=True) if v],
        "incorrect": [a for a, v in zip(analyses, verdicts, strict=True) if v is False],
    }


def decile_shares(analysis: dict[str, Any]) -> list[float] | None:
    """Share of the trajectory's total reverse KL in each tenth of the response."""
    kl = [s["reverse_kl"] for s in analysis["steps"]]
    total = sum(kl)
    if total <= 0:
        return None
    shares = [0.0] * 10
    for t, value in enumerate(kl):
        shares[min(9, t * 10 // len(kl))] += value / total
    return shares


def _log_bins(values: list[float], lo: float = -6.0, hi: float = 2.0, per_decade: int = 4):
    edges = [lo + i / per_decade for i in range(int((hi - lo) * per_decade) + 1)]
    counts = [0] * (len(edges) - 1)
    for v in values:
        x = math.log10(max(v, 10**lo))
        i = min(len(counts) - 1, max(0, int((x - lo) * per_decade)))
        counts[i] += 1
    centers = [10 ** ((a + b) / 2) for a, b in zip(edges, edges[1:], strict=False)]
    return centers, counts


def dataset_figures(analyses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Four views across the dataset, each split by correctness when references exist."""
    groups = _groups(analyses)
    signal, position, agreement, first = [], [], [], []
    for name, members in groups.items():
        color = GROUP_COLORS[name]
        label = f"{name} ({len(members)})"
        values = [s["reverse_kl"] for a in members for s in a["steps"]]
        centers, counts = _log_bins(values)
        total = max(1, len(values))
        signal.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": label,
                "x": centers,
                "y": [c / total for c in counts],
                "line": {"color": color},
            }
        )
        shares = [d for d in (decile_shares(a) for a in members) if d is not None]
        mean = [sum(d[i] for d in shares) / len(shares) for i in range(10)] if shares else [0] * 10
        position.append(
            {
                "type": "bar",
                "name": label,
                "x": [f"{10 * i}–{10 * i + 10}%" for i in range(10)],
                "y": mean,
                "marker": {"color": color},
            }
        )
        agreement.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": label,
                "x": [a["summary"]["tokens"] for a in members],
                "y": [a["summary"]["agreement_rate"] for a in members],
                "text": [a["id"] for a in members],
                "marker": {"color": color, "size": 7},
            }
        )
        firsts = [a["summary"]["first_divergence"] for a in members]
        first.append(histogram_bars([f for f in firsts if f is not None], label, color))
    base = {
        "height": 320,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "plot_bgcolor": "white",
        "legend": {"orientation": "h", "y": -0.25},
    }
    return {
        "signal": {
            "data": signal,
            "layout": {
                **base,
                "title": {"text": "per-step reverse KL (share of steps)"},
                "xaxis": {"type": "log", "title": {"text": "reverse KL (nats)"}},
            },
        },
        "position": {
            "data": position,
            "layout": {
                **base,
                "barmode": "group",
                "title": {"text": "where the signal sits: mean share of total KL by relative position"},
                "yaxis": {"tickformat": ".0%"},
            },
        },
        "agreement": {
            "data": agreement,
            "layout": {
                **base,
                "title": {"text": "agreement rate vs response length"},
                "xaxis": {"title": {"text": "tokens"}},
                "yaxis": {"tickformat": ".0%"},
            },
        },
        "first_divergence": {
            "data": first,
            "layout": {
                **base,
                "barmode": "group",
                "title": {"text": "first divergence position"},
                "xaxis": {"title": {"text": "token position"}},
            },
        },
    }


def histogram_bars(values: list[int], name: str, color: str, bins: int = 20) -> dict[str, Any]:
    """A histogram of non-negative integers as a bar trace (the page's plotly.js bundle has no
    histogram trace): at most `bins` bins of equal integer width."""
    top = max(values, default=0) + 1
    width = max(1, math.ceil(top / bins))
    counts = [0] * math.ceil(top / width)
    for v in values:
        counts[v // width] += 1
    return {
        "type": "bar",
        "name": name,
        "x": [i * width for i in range(len(counts))],
        "y": counts,
        "width": [width * 0.9] * len(counts),
        "offset": 0,
        "marker": {"color": color},
    }
