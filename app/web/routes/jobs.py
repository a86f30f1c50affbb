"""Batch jobs over HTTP: upload a file of trajectories, follow the job, read and export results."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send
from vrollout.errors import BadTrajectory, Cancelled, QueueFull, TooLong, VRError
from vrollout.inputs.sources import iter_rows
from vrollout.inputs.teacher_context import teacher_options, wants_sibling
from vrollout.inputs.trajectories import LineError
from vrollout.jobs.pedagogical import MODES, line_options, parse_sweep, pedagogical_options
from vrollout.jobs.progress import Follower
from vrollout.jobs.runner import JobRunner
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.digest import summary_of
from vrollout.pipeline.lines import key_warnings
from vrollout.pipeline.preflight import job_preflight
from vrollout.report.dataset import (
    figures_of,
    json_array_chunks,
    jsonl_chunks,
    objective_rows,
    objectives_csv_chunks,
    steps_of,
    steps_parquet_chunks,
    summaries_csv_chunks,
)
from vrollout.report.drift import drift_csv, drift_rows
from vrollout.report.headline import FORMATS as HEADLINE_FORMATS
from vrollout.report.headline import headline
from vrollout.report.overview import dataset_answer, settings_of
from vrollout.report.tables import KL_STRIP_MAX_NATS, trajectory_row
from vrollout.schema.analysis import OBJECTIVE_NAMES
from vrollout.schema.responses import (
    Deleted,
    DriftRow,
    Figure,
    Headline,
    Job,
    JobCreated,
    JobItem,
    JobOverview,
    JobPreflight,
    ObjectiveRow,
    SummaryRow,
    TrajectoryRow,
    media,
)
from vrollout.storage.jobs import FINAL, Jobs
from vrollout.verdicts.math_check import Budget
from vrollout.web.routes.analyses import ERRORS, AnalyzerDep, client_gone, from_state

router = APIRouter(prefix="/api/jobs", tags=["jobs"], responses=ERRORS)


JobsDep = Annotated[Jobs, Depends(from_state("jobs"))]
RunnerDep = Annotated[JobRunner, Depends(from_state("runner"))]


class PedagogicalForm:
    """The options of a pedagogical job (`mode=pedagogical`), as form fields; ignored otherwise."""

    def __init__(
        self,
        threshold: Annotated[
            float | None, Form(description="pedagogical: the teacher steps in below this probability (0.05)")
        ] = None,
        max_rank: Annotated[
            int | None, Form(description="pedagogical: ... or above this teacher rank")
        ] = None,
        temperature: Annotated[
            float | None, Form(description="pedagogical: the student's sampling (0)")
        ] = None,
        top_p: Annotated[float | None, Form(description="pedagogical: nucleus sampling (1)")] = None,
        seed: Annotated[int | None, Form(description="pedagogical: sampling seed (0)")] = None,
        max_new_tokens: Annotated[
            int | None, Form(description="pedagogical: rollout length bound (128)")
        ] = None,
        sweep: Annotated[str | None, Form(description="pedagogical: thresholds, comma-separated")] = None,
    ) -> None:
        self.fields = {"threshold": threshold, "max_rank": max_rank, "temperature": temperature,
                       "top_p": top_p, "seed": seed, "max_new_tokens": max_new_tokens}  # fmt: skip
        self.sweep = sweep

    def given(self, analyzer: Analyzer) -> dict[str, Any]:
        """Checked as POST /api/pedagogical checks its own (a 422 names the field)."""
        return pedagogical_options(analyzer, sweep=parse_sweep(self.sweep), **self.fields)


class ObjectivesForm:
    """The distillation objectives' options (docs/objectives.md) as form fields, the same as the
    API body's and the CLI's flags: set for every line that sets none of its own."""

    def __init__(
        self,
        objectives: Annotated[
            str | None, Form(description="distillation objectives per step, comma-separated (default: all)")
        ] = None,
        objective_k: Annotated[int | None, Form(description="top-k of the top-k objectives (20)")] = None,
        jsd_beta: Annotated[float | None, Form(description="β of TRL's generalised JSD (0.5)")] = None,
        clip_tau: Annotated[float | None, Form(description="clip of the clipped objectives (0.05)")] = None,
    ) -> None:
        self.objectives = objectives
        self.fields = {"objective_k": objective_k, "jsd_beta": jsd_beta, "clip_tau": clip_tau}

    def options(self) -> dict[str, Any]:
        """The line options; an unknown name is refused here, once, rather than on every line.
        The numbers are checked per line as the API body's are (a line error naming the field)."""
        names = None
        if self.objectives is not None and self.objectives.strip():
            names = [name.strip() for name in self.objectives.split(",") if name.strip()]
            unknown = [name for name in names if name not in OBJECTIVE_NAMES]
            if unknown:
                raise BadTrajectory(
                    f"unknown objective(s) {', '.join(unknown)}: choose from {', '.join(OBJECTIVE_NAMES)}",
                    field="objectives",
                )
        given = {"objectives": names, **self.fields}
        return {name: value for name, value in given.items() if value is not None}  # unset: none stored


def display_name(filename: str | None) -> str:
    """The upload's name for display only: never a path, never markup-significant characters."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^\w.\- ]", "_", name)[:100] or "upload"


# Uploads validated at once (each on a thread of the shared pool, with the requests' math-verify
# helpers, verdicts.math_check.REQUEST_POOL_SIZE); one more is refused with a 429.
MAX_VALIDATIONS = 2
VALIDATION_RETRY_S = 5  # the Retry-After of that 429: a typical upload's validation


class Validations:
    """The uploads being validated now: at most `size` at once (counted on the event loop)."""

    def __init__(self, size: int) -> None:
        self.size, self.busy = size, 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.busy >= self.size:
            raise QueueFull(
                f"{self.busy} uploads are being validated, the most at once; retry in about "
                f"{VALIDATION_RETRY_S} s",
                retry_after=VALIDATION_RETRY_S,
            )
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


def validations(request: Request) -> Validations:
    """The app's `Validations` (made on first use)."""
    found = getattr(request.app.state, "validations", None)
    if found is None:
        found = request.app.state.validations = Validations(MAX_VALIDATIONS)
    return found


def validate_lines(
    analyzer: Analyzer,
    data: bytes,
    options: dict[str, Any],
    privileged: str | None,
    mapping: str | None = None,
    preset: str | None = None,
    name: str = "upload",
    stop: threading.Event | None = None,
) -> tuple[list[tuple[int, str]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Each line checked on its own (nothing valid is dropped because a neighbour was bad):
    the good lines (as stored, as JSON text: unknown keys moved into `meta`), the rejected ones,
    and a warning per unknown key. The file is JSONL, a JSON array or Parquet (inputs.sources),
    its columns renamed by `mapping` and `preset` first. Rows are read one at a time, again for
    each pass, so no pass holds the file's rows (memory: about the file's size, as the kept lines).
    `stop` (the client went away) ends it at the next row with `Cancelled`. The sibling index's
    math-verify checks spend one `math_check.Budget` per upload."""

    def rows() -> Iterator[tuple[int, Any]]:
        for row in iter_rows(data, name=name, settings=analyzer.settings, mapping=mapping, preset=preset):
            if stop is not None and stop.is_set():
                raise Cancelled("the client went away")
            yield row

    # Siblings need the whole file first: one validation pass indexes its successful responses
    # (inputs.teacher_context), and each line asking for one gets it written into its `sibling`.
    index = (
        analyzer.index_siblings(rows(), options, privileged, Budget())
        if any(wants_sibling({**options, **obj}) for _, obj in rows() if isinstance(obj, dict))
        else None
    )
    good: list[tuple[int, str]] = []
    rejected: list[dict[str, Any]] = []
    said: dict[str, str] = {}  # each distinct error held once, however many lines it is of
    unknown: dict[str, list[int]] = {}
    for number, obj in rows():
        if isinstance(obj, LineError):
            rejected.append({"line": number, "error": said.setdefault(obj.error, obj.error)})
            continue
        try:
            where = None if index is None else (number, index)
            _, line, keys = analyzer.prepare_line(obj, options, privileged, where)
            good.append((number, json.dumps(line)))  # as Jobs.create stores it: no bigger than read
            for key in keys:
                unknown.setdefault(key, []).append(number)
        except VRError as exc:
            rejected.append({"line": number, "error": said.setdefault(exc.message, exc.message)})
    rejected.sort(key=lambda r: r["line"])
    return good, rejected, key_warnings(unknown)


@router.post("", status_code=201, response_model=JobCreated, response_model_exclude_unset=True)
async def create_job(
    analyzer: AnalyzerDep,
    jobs: JobsDep,
    runner: RunnerDep,
    file: Annotated[
        UploadFile, File(description="JSONL (one trajectory per line), a JSON array, or Parquet")
    ],
    pedagogical: Annotated[PedagogicalForm, Depends()],
    objectives: Annotated[ObjectivesForm, Depends()],
    privileged: Annotated[str | None, Form(description="for every line that has none")] = None,
    top_k: Annotated[int | None, Form(description="default 5 (limit: VROLLOUT_MAX_TOP_K)")] = None,
    continuation_tokens: Annotated[int, Form()] = 0,
    map: Annotated[
        str | None,
        Form(description="column mapping field=column,... e.g. prompt=question,privileged=solution"),
    ] = None,
    from_: Annotated[
        str | None, Form(alias="from", description="a framework's log: verl, trl, tinker or auto")
    ] = None,
    teacher_context: Annotated[
        str | None,
        Form(description="privileged (default), sibling or feedback: for every line that sets none"),
    ] = None,
    teacher_template: Annotated[
        str | None,
        Form(description="{prompt} and {privileged} (or {feedback}): for every line that sets none"),
    ] = None,
    mode: Annotated[
        str,
        Form(
            description="analysis (default), or pedagogical: per line the student's own rollout, "
            "OPD's view of it and a pedagogical rollout (a rollout record, docs/formats.md)"
        ),
    ] = "analysis",
    *,
    request: Request,
) -> dict[str, Any]:
    """Validate the file line by line; the valid lines become a job that runs in the background.
    The invalid ones come back with their line numbers and reasons; keys that are not fields
    (and not near misses of one, which are errors) are kept in each line's `meta` and listed in
    `warnings`. With `mode=pedagogical` the pedagogical options are checked as
    `POST /api/pedagogical` checks its own, and a line without a response is answered by the
    student with the same sampling settings and seed. At most two uploads are validated at once
    (429 with Retry-After past that); one whose client goes away stops and creates nothing."""
    with validations(request).slot():  # 429 past MAX_VALIDATIONS
        return await _create_job(
            request, analyzer, jobs, runner, file, pedagogical, objectives, privileged, top_k,
            continuation_tokens, map, from_, teacher_context, teacher_template, mode,
        )  # fmt: skip


async def _create_job(
    request: Request,
    analyzer: Analyzer,
    jobs: Jobs,
    runner: JobRunner,
    file: UploadFile,
    pedagogical: PedagogicalForm,
    objectives: ObjectivesForm,
    privileged: str | None,
    top_k: int | None,
    continuation_tokens: int,
    map: str | None,
    from_: str | None,
    teacher_context: str | None,
    teacher_template: str | None,
    mode: str,
) -> dict[str, Any]:
    limit = analyzer.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise TooLong(f"the file is over the limit of {limit} bytes (VROLLOUT_MAX_UPLOAD_BYTES)")
    options: dict[str, Any] = {
        "top_k": top_k,
        "continuation_tokens": continuation_tokens,
        **teacher_options(teacher_context or None, teacher_template or None),
        **objectives.options(),
    }
    stored_options = options
    if mode not in MODES:
        raise BadTrajectory(f"mode must be analysis or pedagogical, got {mode!r}", field="mode")
    if mode == "pedagogical":
        given = pedagogical.given(analyzer)
        options = {**options, **line_options(given)}  # what each line is prepared with
        stored_options = {"mode": mode, **options, **given}
    # A client that goes away stops its validation at the next row, and gets no job.
    stop = threading.Event()
    watcher = asyncio.ensure_future(client_gone(request))
    watcher.add_done_callback(lambda _: stop.set())
    try:
        good, rejected, warnings = await run_in_threadpool(
            validate_lines,
            analyzer,
            data,
            options,
            privileged,
            map or None,
            from_ or None,
            display_name(file.filename),
            stop,
        )
        del data  # the kept lines are what the job needs now
        if not good:
            shown = "; ".join(f"line {r['line']}: {r['error']}" for r in rejected[:5])
            raise BadTrajectory(f"no valid trajectory in the file ({shown})", rejected=rejected)
        if stop.is_set():
            raise Cancelled("the client went away")
        job_id = await run_in_threadpool(
            jobs.create, display_name(file.filename), stored_options, good, rejected, warnings
        )
    finally:
        stop.set()  # also when this request is cancelled mid-validation: its thread stops too
        watcher.cancel()
    runner.wake.set()
    job = await run_in_threadpool(runner.state, job_id)
    return {"job": job, "accepted": len(good), "rejected": rejected, "warnings": warnings}


@router.get("", response_model=list[Job], response_model_exclude_unset=True)
async def list_jobs(jobs: JobsDep) -> list[dict[str, Any]]:
    """Jobs, newest first."""
    return await run_in_threadpool(jobs.list)


@router.get("/{job_id}", response_model=Job, response_model_exclude_unset=True)
async def job_state(job_id: str, runner: RunnerDep) -> dict[str, Any]:
    """State, counts, tokens per second and time left."""
    return await run_in_threadpool(runner.state, job_id)


class ProgressStream(EventSourceResponse):
    """An event stream that gives its place among the job's followers back however it ends
    (finished, idle, client gone, send timed out, server stopping)."""

    def __init__(self, follower: Follower, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.follower = follower

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.follower.close()


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses=media(
        "Server-Sent Events", {"text/event-stream": "`progress` events (a job's state), then `end`"}
    ),
)
async def job_events(job_id: str, request: Request, runner: RunnerDep) -> EventSourceResponse:
    """Server-Sent Events: a `progress` event whenever the job's state changes, then `end`.
    Every stream of a job shares one state, computed once per change; a comment line every
    VROLLOUT_STREAM_KEEPALIVE_S keeps proxies from cutting a quiet stream. At most
    VROLLOUT_MAX_STREAMS_PER_JOB streams per job (429) and VROLLOUT_MAX_STREAMS in all (503); a
    stream with no new progress for VROLLOUT_STREAM_IDLE_TIMEOUT_S ends (EventSource reconnects)."""
    settings = request.app.state.settings
    follower = await runner.feed.follow(job_id)  # 404 (or 429/503) before the stream starts

    async def events() -> AsyncIterator[dict[str, str]]:
        last = None
        try:
            async for state in follower.states(settings.stream_idle_timeout_s):
                key = (state["state"], state["done"], state["failed"], state["error"])
                if key != last:
                    last = key
                    yield {"event": "progress", "data": json.dumps(state)}
                if state["state"] in FINAL:
                    yield {"event": "end", "data": json.dumps(state)}
                    return
        finally:
            follower.close()

    return ProgressStream(
        follower,
        events(),
        ping=settings.stream_keepalive_s,
        send_timeout=settings.stream_send_timeout_s,
        sep="\n",
    )


@router.post("/{job_id}/cancel", response_model=Job, response_model_exclude_unset=True)
async def cancel_job(job_id: str, runner: RunnerDep) -> dict[str, Any]:
    """Stop after the line in progress; finished lines are kept. `resume` continues it."""
    return await run_in_threadpool(runner.cancel, job_id)


@router.post("/{job_id}/resume", response_model=Job, response_model_exclude_unset=True)
async def resume_job(job_id: str, runner: RunnerDep) -> dict[str, Any]:
    return await run_in_threadpool(runner.resume, job_id)


@router.get("/{job_id}/items", response_model=list[JobItem], response_model_exclude_unset=True)
async def job_items(job_id: str, jobs: JobsDep) -> list[dict[str, Any]]:
    """Every line of the job: state, analysis id or error."""
    return await run_in_threadpool(jobs.items, job_id)


@router.delete("/{job_id}", response_model=Deleted, response_model_exclude_unset=True)
async def delete_job(job_id: str, runner: RunnerDep) -> dict[str, Any]:
    """Delete the job with its lines and their analyses; a running job is cancelled first."""
    deleted = await run_in_threadpool(runner.delete, job_id)
    return {"ok": True, "id": job_id, "analyses_deleted": deleted}


async def _check(jobs: Jobs, job_id: str) -> None:
    await run_in_threadpool(jobs.get, job_id)  # 404 before a download starts


def _summaries(jobs: Jobs, job_id: str) -> Iterator[dict[str, Any]]:
    return (summary_of(d) for d in jobs.digests(job_id))


@router.get(
    "/{job_id}/summaries",
    response_model=list[SummaryRow],
    responses=media("the rows", {"text/csv": "format=csv", "application/x-ndjson": "format=jsonl"}),
)
async def job_summaries(job_id: str, jobs: JobsDep, format: str = "json") -> Response:
    """One row per analysed trajectory: `format=json` (default), `csv` or `jsonl`. Built from the
    summary rows stored with each analysis and streamed, so any size of job is cheap."""
    if format not in ("json", "csv", "jsonl"):
        raise BadTrajectory("format must be json, csv or jsonl", field="format")
    await _check(jobs, job_id)
    rows = _summaries(jobs, job_id)
    if format == "csv":
        return _download(summaries_csv_chunks(rows), "text/csv", f"{job_id}-summaries.csv")
    if format == "jsonl":
        return _download(jsonl_chunks(rows), "application/x-ndjson", f"{job_id}-summaries.jsonl")
    return StreamingResponse(json_array_chunks(rows), media_type="application/json")


@router.get(
    "/{job_id}/objectives",
    response_model=list[ObjectiveRow],
    responses=media("the rows", {"text/csv": "format=csv"}),
)
async def job_objectives(job_id: str, jobs: JobsDep, format: str = "json") -> Response:
    """The distillation objectives' table (docs/objectives.md): one row per analysis x objective
    with total, bias, spearman, top5pct_overlap, gini and clipped_share; `format=json` (default)
    or `csv` (the CLI folder's objectives.csv). Built from the stored digests and streamed."""
    if format not in ("json", "csv"):
        raise BadTrajectory("format must be json or csv", field="format")
    await _check(jobs, job_id)
    rows = objective_rows(jobs.digests(job_id))
    if format == "csv":
        return _download(objectives_csv_chunks(rows), "text/csv", f"{job_id}-objectives.csv")
    return StreamingResponse(json_array_chunks(rows), media_type="application/json")


@router.get(
    "/{job_id}/steps",
    response_class=StreamingResponse,
    responses=media(
        "every step, one row each",
        {"application/vnd.apache.parquet": "format=parquet", "application/x-ndjson": "format=jsonl"},
    ),
)
async def job_steps(job_id: str, jobs: JobsDep, format: str = "parquet") -> Response:
    """Every step of every trajectory, one row each: `format=parquet` (default) or `jsonl`.
    `pd.read_parquet(url)` gives the table. Streamed one analysis (and one Parquet row group)
    at a time."""
    if format not in ("parquet", "jsonl"):
        raise BadTrajectory("format must be parquet or jsonl", field="format")
    await _check(jobs, job_id)
    analyses = jobs.each_analysis(job_id)
    if format == "jsonl":
        pieces = (piece for a in analyses for piece in jsonl_chunks(steps_of(a)))
        return _download(pieces, "application/x-ndjson", f"{job_id}-steps.jsonl")
    return _download(
        steps_parquet_chunks(analyses), "application/vnd.apache.parquet", f"{job_id}-steps.parquet"
    )


@router.get("/{job_id}/table", response_model=list[TrajectoryRow])
async def job_table(job_id: str, jobs: JobsDep) -> Response:
    """The job page's trajectories table: each summary row with divergences per 100 tokens and a
    mini strip of the reverse KL by tenth of the response (absolute, nats per token). Built from
    the stored digests and streamed."""
    await _check(jobs, job_id)
    rows = (trajectory_row(d) for d in jobs.digests(job_id))
    return StreamingResponse(json_array_chunks(rows), media_type="application/json")


def overview(jobs: Jobs, job_id: str, analyzer: Analyzer) -> dict[str, Any]:
    """The job's answer, models and settings. Before any line is done the models are the
    server's own (which will run it)."""
    job = jobs.get(job_id)
    models = jobs.models(job_id)
    if not models:
        pair = analyzer.pair
        models = [{"student": pair.student.name, "teacher": pair.teacher.name, "trajectories": 0}]
    return {
        "answer": dataset_answer(jobs.digests(job_id)),
        "models": models,
        "settings": settings_of(job["options"]),
        "kl_strip_max_nats": KL_STRIP_MAX_NATS,
    }


@router.get("/{job_id}/overview", response_model=JobOverview)
async def job_overview(job_id: str, jobs: JobsDep, analyzer: AnalyzerDep) -> dict[str, Any]:
    """The job page's first screen: the dataset's answer in a sentence, the models that made its
    analyses and every setting it ran with (defaults named)."""
    return await run_in_threadpool(overview, jobs, job_id, analyzer)


@router.get("/{job_id}/figures", response_model=dict[str, Figure])
async def job_figures(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """The dataset page's Plotly figures (each opens with `plotly.io.from_json`)."""
    return await run_in_threadpool(lambda: figures_of(jobs.digests(job_id)))


@router.get("/{job_id}/preflight", response_model=JobPreflight)
async def job_preflight_view(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """The job's preflight (docs/metrics.md, "Preflight"): how many lines have contexts that
    differ outside the privileged block (by kind), and over lines the noise floor, the signal
    and the leak share. Built from the stored digests."""
    return await run_in_threadpool(lambda: job_preflight([d.get("preflight") for d in jobs.digests(job_id)]))


@router.get(
    "/{job_id}/headline",
    response_model=Headline,
    responses=media(
        "the table",
        {"text/csv": "format=csv", "text/markdown": "format=md", "application/x-tex": "format=tex"},
    ),
)
async def job_headline(job_id: str, jobs: JobsDep, format: str = "json") -> dict[str, Any] | Response:
    """The dataset's headline table (measures × all, correct, incorrect; each cell the median
    across trajectories with its interquartile range and n): `format=json` (default), or as a
    file to paste into a paper, `csv`, `md` (Markdown) or `tex` (LaTeX, booktabs)."""
    if format != "json" and format not in HEADLINE_FORMATS:
        raise BadTrajectory("format must be json, csv, md or tex", field="format")
    table = await run_in_threadpool(lambda: headline(jobs.digests(job_id)))
    if format == "json":
        return table
    render, media_type, suffix = HEADLINE_FORMATS[format]
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-headline.{suffix}"'}
    return Response(render(table), media_type=media_type, headers=headers)


@router.get(
    "/{job_id}/drift",
    response_model=list[DriftRow],
    responses=media("one row per training step", {"text/csv": "format=csv"}),
)
async def job_drift(job_id: str, jobs: JobsDep, format: str = "json") -> list[dict[str, Any]] | Response:
    """Drift across training steps: one row per `step` the job's lines carry (empty when none
    does), `format=json` (default) or `csv`. Built from the stored digests."""
    if format not in ("json", "csv"):
        raise BadTrajectory("format must be json or csv", field="format")
    rows = await run_in_threadpool(lambda: drift_rows(jobs.digests(job_id)))
    if format == "json":
        return rows
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-drift.csv"'}
    return Response(drift_csv(rows), media_type="text/csv", headers=headers)


def _download(pieces: Iterator[str] | Iterator[bytes], media_type: str, filename: str) -> StreamingResponse:
    """A download, sent as it is made (the pieces are made on a thread)."""
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(pieces, media_type=media_type, headers=headers)
