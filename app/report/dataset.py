"""Dataset views of many analyses: one row per trajectory, one row per step, aggregate figures.

Pure functions, no database and no HTTP. Large jobs never need every analysis in memory at once:
each analysis is reduced to a `digest` (its summary row, the histogram of its per-step reverse
KL, its KL by tenth of the response) when it is stored, the summaries and figures are built from
digests, and the step tables are written one analysis at a time (`steps_parquet_chunks`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from vrollout.pipeline.digest import KL_BINS, SUMMARY_COLUMNS, kl_bin_counts
from vrollout.report.chart import chart_layout, count_axis
from vrollout.report.drift import Drift, drift_figures
from vrollout.report.tables import Pieces, csv_chunks

STEP_COLUMNS = (
    "analysis_id", "line", "trajectory_id", "position", "token_id", "token", "student_logprob",
    "teacher_logprob", "advantage", "reverse_kl", "forward_kl", "student_entropy",
    "teacher_entropy", "teacher_top1_id", "teacher_top1", "agree", "teacher_rank",
    "teacher_mass_on_student_topk", "correction_in_student_topk", "divergence_kind", "fork_matters",
    "scored", "turn", "segment",
)  # fmt: skip
# The Parquet type of each step column, fixed so that row groups written one by one agree.
STEP_TYPES = {
    "analysis_id": "string", "line": "int64", "trajectory_id": "string", "position": "int64",
    "token_id": "int64", "token": "string", "student_logprob": "float64",
    "teacher_logprob": "float64", "advantage": "float64", "reverse_kl": "float64",
    "forward_kl": "float64", "student_entropy": "float64", "teacher_entropy": "float64",
    "teacher_top1_id": "int64", "teacher_top1": "string", "agree": "bool", "teacher_rank": "int64",
    # Null in analyses made before them, or where not computed (docs/metrics.md).
    "teacher_mass_on_student_topk": "float64", "correction_in_student_topk": "bool",
    "divergence_kind": "string", "fork_matters": "bool",
    # A conversation's (#25): false on context steps, whose figures are null; turn null for ids.
    "scored": "bool", "turn": "int64", "segment": "string",
}  # fmt: skip
ROW_GROUP_ROWS = 32_768  # steps per Parquet row group: what an export holds in memory at once
GROUP_COLORS = {"all": "#2c6fbb", "correct": "#27ae60", "incorrect": "#c0392b"}


def step_rows(analyses: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step of every analysis (pandas-friendly: `pd.DataFrame(rows)`)."""
    return [row for a in analyses for row in steps_of(a)]


def steps_of(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The step rows of one analysis: every column, null where the step lacks the field (an
    analysis stored before it existed), as the Parquet export has them."""
    head = {
        "analysis_id": analysis["id"],
        "line": analysis.get("job", {}).get("line"),
        "trajectory_id": analysis.get("trajectory", {}).get("id"),
    }
    return [{**head, **{k: s.get(k) for k in STEP_COLUMNS if k not in head}} for s in analysis["steps"]]


def summaries_csv_chunks(rows: Iterable[dict[str, Any]], chunk_rows: int = 500) -> Iterator[str]:
    """The summaries as CSV, a few hundred rows per piece."""
    return csv_chunks(rows, SUMMARY_COLUMNS, chunk_rows)


# One row per analysis x objective (summary.objectives, docs/objectives.md): objectives.csv and
# GET /api/jobs/{job_id}/objectives.
OBJECTIVE_COLUMNS = (
    "analysis_id", "line", "trajectory_id", "objective", "total", "bias", "spearman",
    "top5pct_overlap", "gini", "clipped_share",
)  # fmt: skip
OBJECTIVE_FIELDS = OBJECTIVE_COLUMNS[4:]


def objective_rows(digests: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each analysis's objectives table, from its digest, one row per objective it carries (in
    the analysis's order; none for an analysis stored without objectives)."""
    for d in digests:
        head = {k: d.get(k) for k in OBJECTIVE_COLUMNS[:3]}
        for name, summary in (d.get("objectives") or {}).items():
            yield {**head, "objective": name, **{k: (summary or {}).get(k) for k in OBJECTIVE_FIELDS}}


def objectives_csv_chunks(rows: Iterable[dict[str, Any]], chunk_rows: int = 500) -> Iterator[str]:
    """The objectives table as CSV, a few hundred rows per piece."""
    return csv_chunks(rows, OBJECTIVE_COLUMNS, chunk_rows)


def summaries_csv(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(summaries_csv_chunks(rows))


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(jsonl_chunks(rows))


def jsonl_chunks(rows: Iterable[dict[str, Any]], chunk_rows: int = 500) -> Iterator[str]:
    """One JSON object per line, a few hundred lines per piece."""
    lines: list[str] = []
    for row in rows:
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        if len(lines) == chunk_rows:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def json_array_chunks(rows: Iterable[dict[str, Any]], chunk_rows: int = 500) -> Iterator[str]:
    """A JSON array, a few hundred items per piece."""
    yield "["
    first = True
    for piece in jsonl_chunks(rows, chunk_rows):
        items = ",".join(piece.splitlines())
        yield items if first else "," + items
        first = False
    yield "]"


def step_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in STEP_TYPES.items()])


def steps_parquet_chunks(
    analyses: Iterable[dict[str, Any]], group_rows: int = ROW_GROUP_ROWS
) -> Iterator[bytes]:
    """The step table as a Parquet file, written a row group at a time: memory holds one row
    group (and one analysis), whatever the number of analyses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = step_schema()
    sink = Pieces()
    writer = pq.ParquetWriter(sink, schema)
    columns: dict[str, list[Any]] = {name: [] for name in STEP_COLUMNS}

    def flush() -> None:
        writer.write_table(pa.table(columns, schema=schema))
        for values in columns.values():
            values.clear()

    try:
        for analysis in analyses:
            for row in steps_of(analysis):
                for name, values in columns.items():
                    values.append(row.get(name))
            if len(columns["position"]) >= group_rows:
                flush()
                yield sink.take()
        if columns["position"] or sink.position == 0:
            flush()  # the last rows; an empty job still gets a valid file with its columns
    finally:
        writer.close()
    yield sink.take()


def steps_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Step rows (as `step_rows` makes them) as one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=step_schema()), out)
    return out.getvalue()


def kl_bin_centers() -> list[float]:
    lo, hi, per_decade = KL_BINS
    edges = [lo + i / per_decade for i in range(int((hi - lo) * per_decade) + 1)]
    return [10 ** ((a + b) / 2) for a, b in zip(edges, edges[1:], strict=False)]


class _Group:
    """What the figures show of one group of analyses, added up one digest at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.kl_counts = kl_bin_counts([])
        self.decile_sums, self.with_deciles = [0.0] * 10, 0
        self.tokens: list[int] = []
        self.agreement: list[float | None] = []
        self.ids: list[str] = []
        self.firsts: list[int] = []
        # One value per trajectory that has one (older digests and zero-signal ones have none).
        self.spread: dict[str, list[float]] = {name: [] for name in SPREAD_FIGURES}

    def add(self, d: dict[str, Any]) -> None:
        self.count += 1
        self.kl_counts = [a + b for a, b in zip(self.kl_counts, d["kl_bins"], strict=True)]
        if d["deciles"] is not None:
            self.decile_sums = [a + b for a, b in zip(self.decile_sums, d["deciles"], strict=True)]
            self.with_deciles += 1
        self.tokens.append(d["tokens"])
        self.agreement.append(d["agreement_rate"])
        self.ids.append(d["analysis_id"])
        if d["first_divergence"] is not None:
            self.firsts.append(d["first_divergence"])
        for name in SPREAD_FIGURES:
            if (value := spread_value(d, name)) is not None:
                self.spread[name].append(value)


# Distributions across trajectories (one value each, in [0, 1]): figure key -> (title, x axis).
SPREAD_FIGURES = {
    "kl_top_5pct": ("top 5% of tokens: their share of the KL", "share of a trajectory's reverse KL"),
    "kl_gini": ("how unevenly the KL is spread (Gini)", "Gini of a trajectory's per-token reverse KL"),
    "surface_share": ("surface divergences (re-join)", "share of a trajectory's classified divergences"),
}
SPREAD_BINS = 20


def spread_value(d: dict[str, Any], name: str) -> float | None:
    """A digest's value for a distribution figure: a summary column, or (surface_share) the
    share of its classified divergences that are surface."""
    if name != "surface_share":
        return d.get(name)
    classified, surface = d.get("divergences_classified"), d.get("divergences_surface")
    return surface / classified if classified and surface is not None else None


def figures_of(digests: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Views across the dataset, each split by correctness when references exist (with "all"
    beside the split when some lines have no verdict): the four
    step-level ones, then the distributions across trajectories of SPREAD_FIGURES (surface_share
    only when some trajectory has classified divergences), then the drift views across training
    steps (report/drift.py; only when lines carry a `step`). One pass over the digests: every
    group is added up as they come, then the split is chosen. Groups are drawn side by side
    (bars in slots of their own), every axis is labelled and counts are whole numbers."""
    everything, right, wrong = _Group(), _Group(), _Group()
    drift = Drift()
    for d in digests:
        everything.add(d)
        drift.add(d)
        if d["correct"] is not None:
            (right if d["correct"] else wrong).add(d)
    verdicts = right.count + wrong.count
    # Split by correctness when references exist; where some lines have no verdict, "all" comes
    # first so that no trajectory is missing from the figures (the headline's columns, too).
    if not verdicts:
        groups = {"all": everything}
    elif verdicts == everything.count:
        groups = {"correct": right, "incorrect": wrong}
    else:
        groups = {"all": everything, "correct": right, "incorrect": wrong}
    signal, position, agreement, first = [], [], [], []
    spread: dict[str, list[dict[str, Any]]] = {key: [] for key in SPREAD_FIGURES}
    # One set of bins for every group's first divergences, so that their bars line up.
    top = max((max(g.firsts, default=0) for g in groups.values()), default=0)
    for slot, (name, group) in enumerate(groups.items()):
        color = GROUP_COLORS[name]
        label = f"{name} ({group.count})"
        total = max(1, sum(group.kl_counts))
        signal.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": label,
                "x": kl_bin_centers(),
                "y": [c / total for c in group.kl_counts],
                "line": {"color": color},
            }
        )
        n = group.with_deciles
        mean = [value / n for value in group.decile_sums] if n else [0] * 10
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
                "x": group.tokens,
                "y": group.agreement,
                "text": group.ids,
                "marker": {"color": color, "size": 7},
            }
        )
        first.append(histogram_bars(group.firsts, label, color, top=top, slot=slot, slots=len(groups)))
        for key, values in group.spread.items():
            spread[key].append(share_bars(values, f"{name} ({len(values)})", color))
    shares = {
        key: {
            "data": traces,
            "layout": chart_layout(
                SPREAD_FIGURES[key][0],
                SPREAD_FIGURES[key][1],
                "share of trajectories",
                barmode="group",
                xaxis={"tickformat": ".0%" if key != "kl_gini" else ".1f", "range": [0, 1]},
                yaxis={"tickformat": ".0%", "rangemode": "tozero"},
            ),
        }
        for key, traces in spread.items()
        # surface/fork needs continuations: without any, the figure is left out, not drawn empty
        if key != "surface_share" or any(group.spread[key] for group in groups.values())
    }
    most = max((max(t["y"], default=0) for t in first), default=0)
    return {
        "signal": {
            "data": signal,
            "layout": chart_layout(
                "per-step reverse KL (share of steps)",
                "reverse KL (nats, log scale)",
                "share of steps",
                xaxis={"type": "log"},
                yaxis={"tickformat": ".0%", "rangemode": "tozero"},
            ),
        },
        "position": {
            "data": position,
            "layout": chart_layout(
                "where the signal sits: mean share of total KL by relative position",
                "part of the response (by position)",
                "mean share of the reverse KL",
                barmode="group",
                xaxis={"type": "category"},
                yaxis={"tickformat": ".0%", "rangemode": "tozero"},
            ),
        },
        "agreement": {
            "data": agreement,
            "layout": chart_layout(
                "agreement rate vs response length",
                "response length (tokens)",
                "agreement rate",
                yaxis={"tickformat": ".0%", "range": [-0.03, 1.03]},  # a rate: the whole of [0, 1]
            ),
        },
        "first_divergence": {
            "data": first,
            "layout": chart_layout(
                "first divergence position",
                "first divergence (token position in the response)",
                "trajectories",
                barmode="group",
                xaxis=position_axis(first),
                yaxis=count_axis(most),
            ),
        },
        **shares,
        **drift_figures(drift.rows()),  # only when lines carry a training step
    }


def position_axis(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """The x axis of the first-divergence histogram: whole token positions only, every bin in
    view (its integers span [start - 0.5, start + width - 0.5])."""
    starts = traces[0]["x"] if traces else [0]
    width = starts[1] - starts[0] if len(starts) > 1 else 1
    end = starts[-1] + width - 0.5
    return {**count_axis(math.ceil(end)), "range": [-0.5, end], "rangemode": "normal"}


def share_bars(values: list[float], name: str, color: str, bins: int = SPREAD_BINS) -> dict[str, Any]:
    """The distribution of values in [0, 1] as a bar trace: the share of `values` in each of
    `bins` equal bins (the last one closed), drawn at the bins' centres."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return {
        "type": "bar",
        "name": name,
        "x": [(i + 0.5) / bins for i in range(bins)],
        "y": [c / len(values) if values else 0.0 for c in counts],
        "marker": {"color": color},
    }


def histogram_bars(
    values: list[int],
    name: str,
    color: str,
    bins: int = 20,
    top: int | None = None,
    slot: int = 0,
    slots: int = 1,
) -> dict[str, Any]:
    """A histogram of non-negative integers as a bar trace (the page's plotly.js bundle has no
    histogram trace): at most `bins` bins of equal integer width, from 0 to `top` (default: the
    largest value; give every group the same `top` so that their bins agree). `x` is each bin's
    first value; the bars of `slots` groups share each bin side by side, this one in `slot`."""
    top = (max(values, default=0) if top is None else max(top, *values, 0)) + 1
    width = max(1, math.ceil(top / bins))
    counts = [0] * math.ceil(top / width)
    for v in values:
        counts[v // width] += 1
    bar = 0.9 * width / slots
    return {
        "type": "bar",
        "name": name,
        "x": [i * width for i in range(len(counts))],
        "y": counts,
        "width": [bar] * len(counts),
        # The bin's integers span [start - 0.5, start + width - 0.5]; the slots fill 90% of it.
        "offset": (width - 1) / 2 - 0.45 * width + slot * bar,
        "customdata": [
            f"{i * width}" if width == 1 else f"{i * width}–{i * width + width - 1}"
            for i in range(len(counts))
        ],  # fmt: skip
        "hovertemplate": "first divergence at %{customdata}: %{y}<extra>%{fullData.name}</extra>",
        "marker": {"color": color},
    }
