"""The comparison of a pedagogical job, and its rollouts as training data.

Pure functions over ROLLOUT RECORDS (one per line of a job with `mode=pedagogical`, as
`Jobs.rollouts` reads them back): the student alone, OPD's view of the student's own rollout,
and the pedagogical rollout on the same prompt. From them: the comparison table
(`comparison_rows`, comparison.csv), its headlines (`comparison_summary`, docs/metrics.md
"Pedagogical comparison"), the figures, and the rollouts as TRL prompt-completion data
(`export_rows`, rollouts.jsonl; Parquet). No torch, no HTTP, no database: records come in as
an iterable and every export is written as it is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vrollout.report.pages import standalone_assets, template_env
from vrollout.report.pedagogical_figures import comparison_figures
from vrollout.report.tables import Pieces, csv_chunks

# comparison.csv: DESIGN's six columns first (a contract), then what helps to read them.
COMPARISON_COLUMNS = (
    "id", "student_correct", "opd_divergences", "opd_reverse_kl_total", "pedagogical_correct",
    "interventions",
    "line", "analysis_id", "student_generated", "student_tokens", "opd_forks_that_matter",
    "pedagogical_tokens", "first_intervention", "max_intervention_surprisal",
    "sweep_min_interventions_to_success",
)  # fmt: skip
RESCUE_BUDGETS = (1, 2, 4, 8)  # "rescued with at most N interventions" (issue #16)
INCLUDE = ("successful", "all")
STYLES = ("prompt-completion", "messages")
ROW_GROUP_ROWS = 2_000  # rollouts per Parquet row group: what an export holds in memory at once


# --- One record --------------------------------------------------------------------------------


def intervention_logprobs(record: dict[str, Any]) -> list[float]:
    """The student's log-prob of each token the teacher substituted (how off-policy the rescue
    was), in position order."""
    ped = record["pedagogical"]
    by_position = {t["position"]: t["student_logprob"] for t in ped.get("tokens") or []}
    return [by_position.get(i["position"], -i["student_surprisal"]) for i in ped["interventions"]]


def sweep_min_to_success(sweep: list[dict[str, Any]] | None) -> int | None:
    """The fewest interventions with which any threshold of the line's sweep reached the
    reference (None: no sweep, no reference, or no threshold reached it)."""
    reached = [r["num_interventions"] for r in sweep or [] if r.get("reached_reference")]
    return min(reached) if reached else None


def comparison_row(record: dict[str, Any]) -> dict[str, Any]:
    """One line of comparison.csv."""
    student, opd, ped = record["student"], record["opd"], record["pedagogical"]
    logprobs = intervention_logprobs(record)
    return {
        "id": record["id"],
        "student_correct": student.get("correct"),
        "opd_divergences": opd["divergences"],
        "opd_reverse_kl_total": opd["reverse_kl_total"],
        "pedagogical_correct": ped.get("correct"),
        "interventions": ped["num_interventions"],
        "line": record.get("line"),
        "analysis_id": student.get("analysis_id"),
        "student_generated": student.get("generated"),
        "student_tokens": len(student.get("response_ids") or []),
        "opd_forks_that_matter": opd.get("forks_that_matter"),
        "pedagogical_tokens": len(ped["response_ids"]),
        "first_intervention": ped["interventions"][0]["position"] if ped["interventions"] else None,
        "max_intervention_surprisal": -min(logprobs) if logprobs else None,
        "sweep_min_interventions_to_success": sweep_min_to_success(record.get("sweep")),
    }


def comparison_rows(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """comparison.csv's rows, one per record, in the records' order."""
    return (comparison_row(r) for r in records)


def comparison_csv_chunks(rows: Iterable[dict[str, Any]], chunk_rows: int = 500) -> Iterator[str]:
    """comparison.csv, a few hundred rows per piece (ids are user text: formula-safe cells)."""
    return csv_chunks(rows, COMPARISON_COLUMNS, chunk_rows)


# --- The headlines -----------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, Any]:
    """n, mean, median, the 10th and 90th percentiles (linear, as numpy's default), min, max;
    null numbers where there are no values."""
    if not values:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    ordered = sorted(values)

    def quantile(q: float) -> float:
        at = q * (len(ordered) - 1)
        low = math.floor(at)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (at - low)

    return {
        "n": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "median": quantile(0.5),
        "p10": quantile(0.1),
        "p90": quantile(0.9),
        "min": ordered[0],
        "max": ordered[-1],
    }


def rate(verdicts: list[bool | None]) -> dict[str, Any]:
    """Success among the lines with a verdict: `rate` is null when none has one."""
    judged = [v for v in verdicts if v is not None]
    correct = sum(judged)
    return {"correct": correct, "judged": len(judged), "rate": correct / len(judged) if judged else None}


class ComparisonTally:
    """The comparison, added up one record at a time: the rows (a few numbers per line) and the
    per-intervention log-probs are all it keeps, so a job of any size is read once."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.logprobs: list[float] = []  # every intervention of every line
        self.sweeps: dict[float, list[tuple[int, bool | None]]] = {}  # threshold: (interventions, reached)
        self.prompts_as_text = 0  # lines whose prompt could not be given as messages (`export_row`)
        self.views: list[dict[str, Any]] = []  # the first SHOWN_PROMPTS prompts' texts (report.html)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        row = comparison_row(record)
        self.rows.append(row)
        self.logprobs.extend(intervention_logprobs(record))
        self.prompts_as_text += record["prompt"] is None
        if len(self.views) < SHOWN_PROMPTS:
            self.views.append(prompt_view(record))
        for r in record.get("sweep") or []:
            self.sweeps.setdefault(r["threshold"], []).append(
                (r["num_interventions"], r["reached_reference"])
            )
        return row

    def summary(self) -> dict[str, Any]:
        """The headlines of issue #16 (docs/metrics.md, "Pedagogical comparison")."""
        rows = self.rows
        rescued_lines = [r for r in rows if r["pedagogical_correct"] is True]
        failures = [r for r in rows if r["student_correct"] is False]
        rescue = []
        for budget in RESCUE_BUDGETS:
            count = sum(
                1 for r in failures if r["pedagogical_correct"] is True and r["interventions"] <= budget
            )
            share = count / len(failures) if failures else None
            rescue.append({"budget": budget, "rescued": count, "share": share})
        sweep = []
        for threshold in sorted(self.sweeps):
            runs = self.sweeps[threshold]
            success = rate([reached for _, reached in runs])
            sweep.append(
                {
                    "threshold": threshold,
                    "lines": len(runs),
                    "judged": success["judged"],
                    "success_rate": success["rate"],
                    "mean_interventions": sum(n for n, _ in runs) / len(runs),
                }
            )
        surprisals = [
            r["max_intervention_surprisal"] for r in rows if r["max_intervention_surprisal"] is not None
        ]
        return {
            "lines": len(rows),
            "student": rate([r["student_correct"] for r in rows]),
            "pedagogical": rate([r["pedagogical_correct"] for r in rows]),
            "student_tokens": stats([r["student_tokens"] for r in rows]),
            "pedagogical_tokens": stats([r["pedagogical_tokens"] for r in rows]),
            "interventions_per_success": stats([r["interventions"] for r in rescued_lines]),
            "interventions_all": stats([r["interventions"] for r in rows]),
            "opd_divergences": stats([r["opd_divergences"] for r in rows]),
            "opd_divergences_same_lines": stats([r["opd_divergences"] for r in rescued_lines]),
            "rescue": {"student_failures": len(failures), "by_budget": rescue},
            "sweep": sweep,
            "intervention_student_logprob": stats(self.logprobs),
            "max_surprisal_per_rollout": stats(surprisals),
            "prompts_as_text": self.prompts_as_text,
        }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _middle(s: dict[str, Any], digits: int = 1) -> str:
    """'median · mean (n=N)' of a `stats` dict."""
    return f"{_num(s['median'], digits)} · {_num(s['mean'], digits)} (n={s['n']})"


def headline_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The headlines as text, one row per measure, each in its `column` ("student": the student
    alone, "opd": OPD's view of its rollout, "pedagogical": the pedagogical rollout; "all": the
    line count): what the job page and report.html show side by side
    (templates/_pedagogical_headline.html; both render this list, so they never disagree)."""

    def success(part: dict[str, Any]) -> str:
        return f"{_pct(part['rate'])} ({part['correct']} of {part['judged']} with a verdict)"

    rescue = summary["rescue"]
    none = {"n": 0, "median": None, "mean": None}  # a summary stored before lengths were kept
    rows = [
        ("all", "lines", "Lines", str(summary["lines"])),
        ("student", "student_success", "Success, student alone", success(summary["student"])),
        ("student", "student_tokens", "Length, tokens (median · mean)",
         _middle(summary.get("student_tokens", none))),
        ("opd", "opd_divergences", "OPD divergences on the student's own rollout, all lines (median · mean)",
         _middle(summary["opd_divergences"])),
        ("opd", "opd_divergences_same_lines", "OPD divergences, lines solved by the pedagogical rollout",
         _middle(summary["opd_divergences_same_lines"])),
        ("pedagogical", "pedagogical_success", "Success, pedagogical rollout",
         success(summary["pedagogical"])),
        ("pedagogical", "pedagogical_tokens", "Length, tokens (median · mean)",
         _middle(summary.get("pedagogical_tokens", none))),
        ("pedagogical", "interventions_per_success",
         "Interventions per successful pedagogical rollout (median · mean)",
         _middle(summary["interventions_per_success"])),
    ]  # fmt: skip
    for r in rescue["by_budget"]:
        rows.append(
            (
                "pedagogical",
                f"rescued_{r['budget']}",
                f"Student failures rescued with ≤ {r['budget']} intervention{'s' if r['budget'] > 1 else ''}",
                f"{_pct(r['share'])} ({r['rescued']} of {rescue['student_failures']})",
            )
        )
    logprob, surprisal = summary["intervention_student_logprob"], summary["max_surprisal_per_rollout"]
    rows += [
        ("pedagogical", "intervention_student_logprob",
         "Student log-prob of a substituted token (median · 10th pct.)",
         f"{_num(logprob['median'])} · {_num(logprob['p10'])} (n={logprob['n']})"),
        ("pedagogical", "max_surprisal_per_rollout",
         "Largest surprisal per rollout, nats (median · 90th pct. · max)",
         f"{_num(surprisal['median'])} · {_num(surprisal['p90'])} · {_num(surprisal['max'])}"
         f" (n={surprisal['n']})"),
    ]  # fmt: skip
    return [{"column": column, "key": key, "label": label, "text": text} for column, key, label, text in rows]


# --- One prompt, both texts ----------------------------------------------------------------------

SHOWN_PROMPTS = 200  # prompts whose texts report.html shows (the job page fetches any line's)


def substituted_segments(ped: dict[str, Any]) -> list[dict[str, Any]]:
    """The pedagogical response as runs of text: the student's own tokens merged, each token the
    teacher substituted a run of its own with the student's proposal beside it."""
    proposals = {i["position"]: i["proposal"] for i in ped.get("interventions") or []}
    runs: list[dict[str, Any]] = []
    tokens = ped.get("tokens")
    if not tokens:  # a record without its tokens: the text, unmarked
        return [{"text": ped.get("response_text", ""), "teacher": False, "proposal": None, "position": None}]
    for t in tokens:
        teacher = t["source"] == "teacher"
        if not teacher and runs and not runs[-1]["teacher"]:
            runs[-1]["text"] += t["token"]
            continue
        runs.append({"text": t["token"], "teacher": teacher,
                     "proposal": proposals.get(t["position"]) if teacher else None,
                     "position": t["position"]})  # fmt: skip
    return runs


def prompt_view(record: dict[str, Any]) -> dict[str, Any]:
    """One prompt as the pages show it: the question, the student's text and the pedagogical
    text with the substituted tokens as runs (`substituted_segments`), each with its verdict
    (what was parsed and how; docs/metrics.md "Verdicts")."""
    student, ped = record["student"], record["pedagogical"]
    prompt = record.get("prompt")
    question = record.get("prompt_text")
    if prompt:
        question = "\n\n".join(str(m.get("content", "")) for m in prompt if m.get("role") != "system")
    return {
        "line": record.get("line"),
        "id": record["id"],
        "analysis_id": student.get("analysis_id"),
        "question": question,
        "reference_answer": record.get("reference_answer"),
        "student": {"text": student.get("response_text", ""), "correct": student.get("correct"),
                    "verdict": student.get("verdict")},
        "pedagogical": {"segments": substituted_segments(ped), "correct": ped.get("correct"),
                        "verdict": ped.get("verdict"), "interventions": ped.get("num_interventions", 0)},
    }  # fmt: skip


def comparison_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The headlines over the records (one pass)."""
    comparison = ComparisonTally()
    for record in records:
        comparison.add(record)
    return comparison.summary()


# --- The rollouts as training data -------------------------------------------------------------


def completion_text(ped: dict[str, Any], end_ids: Collection[int]) -> str:
    """The pedagogical response as a completion message's text: without the end-of-sequence
    token that ended the rollout (a chat template adds its own; `completion_ids` keep it). A
    rollout that stopped before `max_new_tokens` stopped on one (pipeline.pedagogical.rollout_steps)."""
    ids, text = ped["response_ids"], ped["response_text"]
    if not ids:
        return text
    ended = ids[-1] in end_ids or len(ids) < ped.get("policy", {}).get("max_new_tokens", math.inf)
    tokens = ped.get("tokens") or []
    last = tokens[-1]["token"] if tokens else ""
    return text[: -len(last)] if ended and last and text.endswith(last) else text


def export_row(
    record: dict[str, Any], style: str = "prompt-completion", end_ids: Collection[int] = ()
) -> dict[str, Any]:
    """One line of rollouts.jsonl (DESIGN "Pedagogical rollouts as data"); `messages`: TRL's
    conversational language-modeling shape (`messages` = prompt + completion), same extra fields.
    A prompt that could not be given as messages (a record's null `prompt`) stays null, never
    one user message holding a rendered text (a trainer would template it twice): `prompt_text`
    holds the exact text instead (`messages` is then null too)."""
    ped = record["pedagogical"]
    prompt = None if record["prompt"] is None else list(record["prompt"])
    completion = [{"role": "assistant", "content": completion_text(ped, end_ids)}]
    logprobs = intervention_logprobs(record)
    interventions = [
        {
            "position": i["position"],
            "token_id": i["substitute_id"],
            "student_token_id": i["proposal_id"],
            "student_logprob": logprob,
            "teacher_prob_of_student_token": i["proposal_teacher_prob"],
        }
        for i, logprob in zip(ped["interventions"], logprobs, strict=True)
    ]
    text = (
        {"messages": None if prompt is None else prompt + completion}
        if style == "messages"
        else {"prompt": prompt, "completion": completion}
    )
    return {
        "id": record["id"],
        **text,
        "prompt_text": record.get("prompt_text"),
        "completion_ids": list(ped["response_ids"]),
        "interventions": interventions,
        "success": ped.get("correct"),
    }


def check_export(include: str, style: str) -> None:
    if include not in INCLUDE:
        raise ValueError(f"include must be one of {', '.join(INCLUDE)}, got {include!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")


def export_rows(
    records: Iterable[dict[str, Any]],
    include: str = "successful",
    style: str = "prompt-completion",
    end_ids: Collection[int] = (),
) -> Iterator[dict[str, Any]]:
    """rollouts.jsonl's lines: only the rollouts that reached the reference (`successful`, the
    default) or `all`. `end_ids`: the student's end-of-sequence ids (see `completion_text`)."""
    check_export(include, style)
    for record in records:
        if include == "all" or record["pedagogical"].get("correct") is True:
            yield export_row(record, style, end_ids)


def rollout_schema(style: str) -> Any:
    """The Parquet schema of the export, fixed so that row groups written one by one agree."""
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    intervention = pa.struct(
        [
            ("position", pa.int64()),
            ("token_id", pa.int64()),
            ("student_token_id", pa.int64()),
            ("student_logprob", pa.float64()),
            ("teacher_prob_of_student_token", pa.float64()),
        ]
    )
    text = (
        [("messages", messages)] if style == "messages" else [("prompt", messages), ("completion", messages)]
    )
    tail = [
        ("prompt_text", pa.string()),
        ("completion_ids", pa.list_(pa.int64())),
        ("interventions", pa.list_(intervention)),
        ("success", pa.bool_()),
    ]
    return pa.schema([("id", pa.string()), *text, *tail])


def rollouts_parquet_chunks(
    rows: Iterable[dict[str, Any]], style: str = "prompt-completion", group_rows: int = ROW_GROUP_ROWS
) -> Iterator[bytes]:
    """Export rows as a Parquet file, a row group at a time (an empty export is still a valid
    file with its columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = rollout_schema(style)
    sink = Pieces()
    writer = pq.ParquetWriter(sink, schema)
    batch: list[dict[str, Any]] = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) >= group_rows:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()
                yield sink.take()
        if batch or sink.position == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    finally:
        writer.close()
    yield sink.take()


def write_pedagogical(
    records: Iterable[dict[str, Any]],
    out_dir: Path | str,
    include: str = "successful",
    end_ids: Collection[int] = (),
    name: str = "pedagogical rollouts",
    student: str = "",
    teacher: str = "",
    settings: Any = None,
    errors: Sequence[tuple[int, str]] = (),
) -> dict[str, Any]:
    """rollouts.jsonl, comparison.csv and a one-file report.html (offline) into `out_dir`, the
    records read once (rollouts.jsonl is written as they come). `errors`: (line, message) of the
    lines that failed, listed in the report; read once the records are, so a list the records'
    iterator fills as it goes is complete by then. Returns the summary."""
    from vrollout.config import Settings

    check_export(include, "prompt-completion")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison = ComparisonTally()
    with (out / "rollouts.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            comparison.add(record)
            if include == "all" or record["pedagogical"].get("correct") is True:
                f.write(json.dumps(export_row(record, end_ids=end_ids), ensure_ascii=False) + "\n")
    with (out / "comparison.csv").open("w", encoding="utf-8", newline="") as f:
        f.writelines(comparison_csv_chunks(comparison.rows))
    summary = comparison.summary()
    settings = settings or Settings()
    env = template_env(settings.templates_dir)  # autoescaped: ids and model text are untrusted
    inline, csp = standalone_assets(settings.static_dir, "report.js")
    page = env.get_template("pedagogical_report.html").generate(
        name=name,
        summary=summary,
        headlines=headline_rows(summary),
        rows=comparison.rows,
        views=comparison.views,
        figures=comparison_figures(summary, comparison.rows),
        include=include,
        errors=sorted(errors),
        student=student,
        teacher=teacher,
        standalone=True,
        csp=csp,
        **inline,
    )
    with (out / "report.html").open("w", encoding="utf-8") as f:
        f.writelines(page)
    return summary
