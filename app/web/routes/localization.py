"""Error localization of a job whose lines carry `steps` and `label` (ProcessBench's shape):
the metrics as JSON (`/api/jobs/{id}/localization`) and as a page (`/jobs/{id}/localization`),
both computed from the job's stored analyses, as `vrollout localize` computes them from its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from vrollout.errors import BadTrajectory, QueueFull
from vrollout.metrics.localization_eval import Setup
from vrollout.report.localization import (
    LocalizationResult,
    heat_maps,
    localization_figures,
    localization_result,
)
from vrollout.web.routes.analyses import ERRORS, AnalyzerDep
from vrollout.web.routes.jobs import JobsDep, RunnerDep

router = APIRouter(tags=["jobs"], responses=ERRORS)


class LocalizationSetup(BaseModel):
    folds: int
    seed: int
    bootstrap: int


class Localization(BaseModel):
    """metrics.json and predictions.jsonl of `vrollout localize` (docs/metrics.md)."""

    scorers: list[str]
    setup: LocalizationSetup
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]


Folds = Annotated[int, Query(ge=2, le=50, description="cross-validation folds over problems")]
Seed = Annotated[int, Query(ge=0, le=2**31 - 1, description="folds and bootstrap resamples")]
Resamples = Annotated[
    int, Query(ge=0, description="bootstrap resamples per interval (limit: VROLLOUT_MAX_BOOTSTRAP)")
]


KEPT_RESULTS = 16  # results kept, per job contents and setup (the most recently used)
MAX_PENDING = 4  # distinct computations queued or running at once; past it 429


class LocalizationLane:
    """Localization metrics computed once per job contents and setup, one computation at a time
    on a thread (a bounded lane: many GETs never hold many threads), the result cached. Requests
    for the same key share its computation; one left by its client still finishes and is cached
    for the next. `computed`: how many were computed (tests read it)."""

    def __init__(self) -> None:
        self.done: OrderedDict[tuple[Any, ...], LocalizationResult] = OrderedDict()
        self.running: dict[tuple[Any, ...], asyncio.Future[LocalizationResult]] = {}
        self.lane = asyncio.Semaphore(1)
        self.computed = 0

    async def get(
        self, key: tuple[Any, ...], compute: Callable[[], LocalizationResult]
    ) -> LocalizationResult:
        if key in self.done:
            self.done.move_to_end(key)
            return self.done[key]
        future = self.running.get(key)
        if future is None:
            if len(self.running) >= MAX_PENDING:
                raise QueueFull(
                    f"{MAX_PENDING} localization computations are already queued or running: retry later",
                    retry_after=5,
                )
            future = self.running[key] = asyncio.ensure_future(self._compute(key, compute))
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, if all left
        return await asyncio.shield(future)  # a client that leaves does not cancel it for others

    async def _compute(
        self, key: tuple[Any, ...], compute: Callable[[], LocalizationResult]
    ) -> LocalizationResult:
        try:
            async with self.lane:
                result = await run_in_threadpool(compute)
            self.computed += 1
            self.done[key] = result
            while len(self.done) > KEPT_RESULTS:
                self.done.popitem(last=False)
            return result
        finally:
            del self.running[key]


def lane_of(request: Request) -> LocalizationLane:
    """The app's localization lane (made on first use)."""
    lane = getattr(request.app.state, "localization_lane", None)
    if lane is None:
        lane = request.app.state.localization_lane = LocalizationLane()
    return lane


def _contents(jobs: Any, job_id: str) -> str:
    """What the job's metrics are computed from: its lines and their analyses (a line finished,
    or an analysis deleted, changes it). 404 for an unknown job."""
    lines = [(item["line"], item["analysis_id"]) for item in jobs.items(job_id)]
    return hashlib.sha256(json.dumps(lines).encode()).hexdigest()


async def _result(
    request: Request, job_id: str, jobs: Any, analyzer: Any, folds: int, seed: int, bootstrap: int
) -> LocalizationResult:
    limit = analyzer.settings.max_bootstrap
    if bootstrap > limit:
        raise BadTrajectory(
            f"bootstrap must be at most {limit} (VROLLOUT_MAX_BOOTSTRAP), got {bootstrap}", field="bootstrap"
        )
    setup = Setup(folds=folds, seed=seed, bootstrap=bootstrap)
    tokenizer = analyzer.pair.student.tokenizer
    contents = await run_in_threadpool(_contents, jobs, job_id)
    # One analysis parsed at a time; only the step scores are kept.
    return await lane_of(request).get(
        (job_id, contents, folds, seed, bootstrap),
        lambda: localization_result(jobs.each_analysis(job_id), tokenizer, None, setup),
    )


@router.get("/api/jobs/{job_id}/localization", response_model=Localization)
async def job_localization(
    request: Request,
    job_id: str,
    jobs: JobsDep,
    analyzer: AnalyzerDep,
    folds: Folds = Setup.folds,
    seed: Seed = Setup.seed,
    bootstrap: Resamples = Setup.bootstrap,
) -> dict[str, Any]:
    """How well each scorer finds the first wrong step in the job's lines that carry `steps` and
    `label` (thresholds by cross-validation over problems, bootstrap 95% intervals); a 422 when
    no analysed line carries them. The recovery scorer is included when the lines ran recovery.
    Computed once per job contents and settings, one computation at a time (429 past a few
    queued), and cached: the page and the JSON share it."""
    result = await _result(request, job_id, jobs, analyzer, folds, seed, bootstrap)
    return {
        "scorers": result.scorers,
        "setup": vars(result.setup),
        "metrics": result.metrics,
        "predictions": result.predictions,
    }


@router.get("/jobs/{job_id}/localization", response_class=HTMLResponse, include_in_schema=False)
async def job_localization_page(
    request: Request,
    job_id: str,
    jobs: JobsDep,
    runner: RunnerDep,
    analyzer: AnalyzerDep,
    folds: Folds = Setup.folds,
    seed: Seed = Setup.seed,
    bootstrap: Resamples = Setup.bootstrap,
) -> Response:
    """The table, the figures and the lines, as the CLI's report.html shows them."""
    from vrollout.web.pages import render

    job = await run_in_threadpool(runner.state, job_id)
    result = await _result(request, job_id, jobs, analyzer, folds, seed, bootstrap)
    figures = await run_in_threadpool(localization_figures, result)
    maps = await run_in_threadpool(heat_maps, result)
    context = {
        "job": job,
        "result": result,
        "figures": figures,
        "heat_maps": maps,
        "name": job["name"],
        "errors": [],
    }
    models = {"student": analyzer.pair.student.name, "teacher": analyzer.pair.teacher.name}
    return await render(request, "localize.html", {**context, **models, "standalone": False})
