"""Error localization of a job whose lines carry `steps` and `label` (ProcessBench's shape):
the metrics as JSON (`/api/jobs/{id}/localization`) and as a page (`/jobs/{id}/localization`),
both computed from the job's stored analyses, as `vrollout localize` computes them from its own.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from vrollout.errors import BadTrajectory
from vrollout.metrics.localization_eval import Setup
from vrollout.report.localization import LocalizationResult, localization_figures, localization_result
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


async def _result(
    job_id: str, jobs: Any, analyzer: Any, folds: int, seed: int, bootstrap: int
) -> LocalizationResult:
    limit = analyzer.settings.max_bootstrap
    if bootstrap > limit:
        raise BadTrajectory(
            f"bootstrap must be at most {limit} (VROLLOUT_MAX_BOOTSTRAP), got {bootstrap}", field="bootstrap"
        )
    setup = Setup(folds=folds, seed=seed, bootstrap=bootstrap)
    tokenizer = analyzer.pair.student.tokenizer
    # One analysis parsed at a time; only the step scores are kept.
    return await run_in_threadpool(
        lambda: localization_result(jobs.each_analysis(job_id), tokenizer, None, setup)
    )


@router.get("/api/jobs/{job_id}/localization", response_model=Localization)
async def job_localization(
    job_id: str,
    jobs: JobsDep,
    analyzer: AnalyzerDep,
    folds: Folds = Setup.folds,
    seed: Seed = Setup.seed,
    bootstrap: Resamples = Setup.bootstrap,
) -> dict[str, Any]:
    """How well each scorer finds the first wrong step in the job's lines that carry `steps` and
    `label` (thresholds by cross-validation over problems, bootstrap 95% intervals); a 422 when
    no analysed line carries them. The recovery scorer is included when the lines ran recovery."""
    result = await _result(job_id, jobs, analyzer, folds, seed, bootstrap)
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
    result = await _result(job_id, jobs, analyzer, folds, seed, bootstrap)
    figures = await run_in_threadpool(localization_figures, result)
    context = {"job": job, "result": result, "figures": figures, "name": job["name"], "errors": []}
    models = {"student": analyzer.pair.student.name, "teacher": analyzer.pair.teacher.name}
    return await render(request, "localize.html", {**context, **models, "standalone": False})
