"""A pedagogical job's comparison and its rollouts as training data, over HTTP: the rows and
headlines of `GET /api/jobs/{id}/comparison` and the export of `GET /api/jobs/{id}/rollouts`,
both built by report/pedagogical.py from the rollout records the job stored (`Jobs.rollouts`).
A job in analysis mode has no records: a 422 that says so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from vrollout.errors import BadTrajectory, NotFound
from vrollout.jobs.pedagogical import end_ids
from vrollout.report.dataset import jsonl_chunks
from vrollout.report.pedagogical import (
    INCLUDE,
    STYLES,
    ComparisonTally,
    comparison_csv_chunks,
    comparison_row,
    export_rows,
    headline_rows,
    prompt_view,
    rollouts_parquet_chunks,
)
from vrollout.report.pedagogical_figures import comparison_figures
from vrollout.schema.responses import Comparison, media
from vrollout.storage.jobs import Jobs
from vrollout.web.routes.analyses import ERRORS, AnalyzerDep
from vrollout.web.routes.jobs import JobsDep

router = APIRouter(prefix="/api/jobs", tags=["jobs"], responses=ERRORS)


def check_pedagogical(jobs: Jobs, job_id: str) -> None:
    """404 for no such job, 422 for a job that ran analyses, not pedagogical rollouts."""
    job = jobs.get(job_id)
    if job.get("mode", "analysis") != "pedagogical":
        raise BadTrajectory(
            f"job {job_id} ran in {job.get('mode', 'analysis')} mode: only a job with mode=pedagogical "
            "has pedagogical rollouts to compare or export",
            field="mode",
        )


def comparison(jobs: Jobs, job_id: str) -> dict[str, Any]:
    tally = ComparisonTally()
    for record in jobs.rollouts(job_id):  # one record at a time; only the rows are kept
        tally.add(record)
    summary = tally.summary()
    return {
        "summary": summary,
        "headlines": headline_rows(summary),
        "figures": comparison_figures(summary, tally.rows),
        "rows": tally.rows,
    }


@router.get(
    "/{job_id}/comparison",
    response_model=Comparison,
    responses=media("comparison.csv", {"text/csv": "format=csv"}),
)
async def job_comparison(
    job_id: str,
    jobs: JobsDep,
    format: str = Query("json", description="json (default) or csv (comparison.csv)"),
) -> dict[str, Any] | Response:
    """The student alone, OPD's view of its own rollout and the pedagogical rollout, per line
    and in aggregate (docs/metrics.md, "Pedagogical comparison"): `format=json` gives the
    headlines (numbers and text), the figures and the rows; `format=csv` the rows
    (comparison.csv). A 422 for a job not in pedagogical mode."""
    if format not in ("json", "csv"):
        raise BadTrajectory("format must be json or csv", field="format")
    await run_in_threadpool(check_pedagogical, jobs, job_id)
    if format == "csv":
        rows = (comparison_row(r) for r in jobs.rollouts(job_id))
        return _download(comparison_csv_chunks(rows), "text/csv", f"{job_id}-comparison.csv")
    return await run_in_threadpool(comparison, jobs, job_id)


@router.get(
    "/{job_id}/rollouts",
    response_class=StreamingResponse,
    responses=media(
        "the pedagogical rollouts as training data",
        {
            "application/x-ndjson": "format=jsonl (rollouts.jsonl)",
            "application/vnd.apache.parquet": "format=parquet",
        },
    ),
)
async def job_rollouts(
    job_id: str,
    jobs: JobsDep,
    analyzer: AnalyzerDep,
    format: str = Query(
        "jsonl", description="jsonl (default), parquet, or messages (= jsonl, style=messages)"
    ),
    style: str = Query("prompt-completion", description="prompt-completion (default) or messages"),
    include: str = Query("successful", description="successful (default: reached the reference) or all"),
) -> Response:
    """The pedagogical rollouts as TRL data (docs/formats.md, rollouts.jsonl): `prompt` and
    `completion` as chat messages (`style=messages`: one `messages` list), the exact
    `completion_ids`, the teacher's `interventions` (position, token, the student's proposal and
    its log-prob of the substitute) and `success`. Streamed as the records are read."""
    if format not in ("jsonl", "parquet", "messages"):
        raise BadTrajectory("format must be jsonl, parquet or messages", field="format")
    if style not in STYLES:
        raise BadTrajectory(f"style must be {' or '.join(STYLES)}", field="style")
    if format == "messages":  # the short form: JSONL in the messages style
        format, style = "jsonl", "messages"
    if include not in INCLUDE:
        raise BadTrajectory(f"include must be {' or '.join(INCLUDE)}", field="include")
    await run_in_threadpool(check_pedagogical, jobs, job_id)
    rows = export_rows(jobs.rollouts(job_id), include, style, end_ids(analyzer))
    name = f"{job_id}-rollouts"
    if format == "parquet":
        return _download(
            rollouts_parquet_chunks(rows, style), "application/vnd.apache.parquet", f"{name}.parquet"
        )
    return _download(jsonl_chunks(rows), "application/x-ndjson", f"{name}.jsonl")


class LineRollout(BaseModel):
    """One line of a pedagogical job: its rollout record and the pages' view of it."""

    record: dict[str, Any] = Field(description="the ROLLOUT RECORD (docs/formats.md, 'Rollout records')")
    view: dict[str, Any] = Field(
        description="the prompt, the student's text and the pedagogical text as runs, the teacher's "
        "substituted tokens marked, each with its verdict (report.pedagogical.prompt_view)"
    )


def line_rollout(jobs: Jobs, job_id: str, line: int) -> dict[str, Any]:
    check_pedagogical(jobs, job_id)
    record = jobs.rollout(job_id, line)
    if record is None:
        raise NotFound(f"job {job_id} has no rollout for line {line} (not run yet, or the line failed)")
    return {"record": record, "view": prompt_view(record)}


@router.get("/{job_id}/rollouts/{line}", response_model=LineRollout)
async def job_line_rollout(
    job_id: str,
    jobs: JobsDep,
    line: Annotated[int, Path(ge=0, le=2**31 - 1, description="the input line number")],
) -> dict[str, Any]:
    """One line's pedagogical rollout: the stored record (the student alone, OPD's view, the
    pedagogical rollout and its sweep) and both texts as the job page shows them, the
    substituted tokens marked and each verdict's parsed answer. 404 for a line without one,
    422 for a job not in pedagogical mode."""
    return await run_in_threadpool(line_rollout, jobs, job_id, line)


def _download(pieces: Iterator[str] | Iterator[bytes], media_type: str, filename: str) -> StreamingResponse:
    """A download, sent as it is made (the pieces are made on a thread)."""
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(pieces, media_type=media_type, headers=headers)
