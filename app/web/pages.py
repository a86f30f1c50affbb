"""HTML pages: renderings of the same data the JSON API returns (datasette style)."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from vrollout.report.analysis_view import chips, diff, page_view, without_steps
from vrollout.report.figures import figure_dict, quadrant_figure
from vrollout.report.pages import standalone_assets, template_env
from vrollout.report.steps_overlay import steps_overlay
from vrollout.report.tables import KL_STRIP_MAX_NATS, kl_color, trajectory_row
from vrollout.storage.jobs import Jobs
from vrollout.storage.store import SQLITE_MAX_INT, Store
from vrollout.web.routes.analyses import AnalyzerDep, RecentAnalyses, RecentDep, StoreDep
from vrollout.web.routes.jobs import JobsDep, RunnerDep, overview

router = APIRouter(include_in_schema=False)
PER_PAGE = 50  # stored analyses per page of /analyses


def make_templates(folder: Path) -> Jinja2Templates:
    """The pages' templates: report/pages.py's environment, with Starlette's response helpers."""
    return Jinja2Templates(env=template_env(folder))


def templates_of(request: Request) -> Jinja2Templates:
    return request.app.state.templates


async def render(request: Request, name: str, context: dict[str, Any]) -> Response:
    """A page, rendered on a thread: a long analysis is megabytes of HTML, and the event loop
    must keep answering (health checks, progress streams) meanwhile."""
    return await run_in_threadpool(templates_of(request).TemplateResponse, request, name, context)


def script_json(text: str) -> str:
    """JSON made safe to sit inside a <script> element (no `</script>`, no HTML specials)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def figure_json(analysis: dict[str, Any]) -> str:
    return script_json(json.dumps(figure_dict(analysis)))


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, analyzer: AnalyzerDep) -> Response:
    return await render(
        request, "index.html", {"models": analyzer.pair.describe(), "settings": analyzer.settings}
    )


@router.get("/upload", response_class=HTMLResponse)
async def upload_page(request: Request, analyzer: AnalyzerDep) -> Response:
    return await render(request, "upload.html", {"settings": analyzer.settings})


def with_modes(jobs: Jobs) -> list[dict[str, Any]]:
    """The jobs, newest first, each with what kind of run it is, as the CLI names them:
    analyze, localize (lines with steps and a label) or pedagogical."""
    items = jobs.list()
    for job in items:
        if job["mode"] == "pedagogical":
            job["kind"] = "pedagogical"
        else:
            job["kind"] = "localize" if jobs.has_localization_lines(job["id"]) else "analyze"
    return items


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, jobs: JobsDep) -> Response:
    items = await run_in_threadpool(with_modes, jobs)
    return await render(request, "jobs.html", {"jobs": items})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str, runner: RunnerDep, analyzer: AnalyzerDep) -> Response:
    job = await run_in_threadpool(runner.state, job_id)
    localization = await run_in_threadpool(runner.jobs.has_localization_lines, job_id)
    # the first screen (answer, models, settings) is in the HTML: nothing blank before a fetch
    known = await run_in_threadpool(overview, runner.jobs, job_id, analyzer)
    return await render(request, "job.html", {"job": job, "localization": localization, "overview": known})


@router.get("/analyses", response_class=HTMLResponse)
async def analyses_page(
    request: Request,
    store: StoreDep,
    jobs: JobsDep,
    page: Annotated[int, Query(ge=1, le=SQLITE_MAX_INT // PER_PAGE)] = 1,
) -> Response:
    per_page = PER_PAGE
    items, total = await run_in_threadpool(store.list, per_page, (page - 1) * per_page)
    rows = await run_in_threadpool(table_rows, store, jobs, items)
    return await render(
        request,
        "analyses.html",
        {"items": rows, "total": total, "page": page, "pages": max(1, math.ceil(total / per_page)),
         "kl_strip_max": KL_STRIP_MAX_NATS, "kl_color": kl_color},
    )  # fmt: skip


def table_rows(store: Store, jobs: Jobs, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each listed analysis with the job table's columns (from its digest: divergences per 100
    tokens, top-5% share, the mini strip, the response, the verdict, the step) and, when a job
    made it, that job and line."""
    made_by = jobs.lines_of([it["id"] for it in items])
    rows = []
    for it in items:
        found = store.digest_of(it["id"])
        row = trajectory_row(found) if found is not None else {}
        rows.append({**it, "row": row, "job": made_by.get(it["id"])})
    return rows


def analysis_context(analysis: dict[str, Any], standalone: bool) -> dict[str, Any]:
    """What analysis.html renders from: the analysis (its steps for the server-side parts: the
    chips, the diff, the alignment) and, as JSON for the script, the analysis without its steps
    and the page's view (report/analysis_view.py). A page on the server embeds the first block of
    steps and fetches the rest by range; a one-file download embeds them all."""
    view = page_view(analysis, all_steps=standalone)
    quadrants = quadrant_figure(analysis)  # TIP's scatter (docs/objectives.md); None: not computed
    return {
        "a": analysis,
        "s": analysis["summary"],
        "figure_json": figure_json(analysis),
        "quadrant_json": None if quadrants is None else script_json(json.dumps(quadrants)),
        "analysis_json": script_json(json.dumps(without_steps(analysis))),
        "view_json": script_json(json.dumps(view)),
        "view": view,
        "chips": chips(analysis, view["marks"]),
        "diff": None if view["long"] else diff(analysis["steps"]),
        "overlay": steps_overlay(analysis),  # a step-labelled line's steps (_steps_overlay.html)
    }


async def _analysis_context(recent: RecentAnalyses, analysis_id: str, standalone: bool) -> dict[str, Any]:
    build = partial(analysis_context, standalone=standalone)
    return await run_in_threadpool(recent.derive, analysis_id, ("page", standalone), build)


@router.get("/analyses/{analysis_id}", response_class=HTMLResponse)
async def analysis_page(request: Request, analysis_id: str, recent: RecentDep) -> Response:
    context = await _analysis_context(recent, analysis_id, standalone=False)
    limit = request.app.state.settings.max_new_tokens
    return await render(request, "analysis.html", {**context, "standalone": False, "max_new_tokens": limit})


@router.get("/analyses/{analysis_id}/download", response_class=HTMLResponse)
async def analysis_download(request: Request, analysis_id: str, recent: RecentDep) -> Response:
    """One self-contained HTML file (plotly.js, CSS and script inlined, every step embedded) that
    opens offline."""
    context = await _analysis_context(recent, analysis_id, standalone=True)
    static = request.app.state.settings.static_dir
    inline, csp = await run_in_threadpool(standalone_assets, static, "analysis.js")
    response = await render(request, "analysis.html", {**context, **inline, "csp": csp, "standalone": True})
    response.headers["Content-Disposition"] = f'attachment; filename="analysis-{analysis_id}.html"'
    response.headers["Content-Security-Policy"] = f"{csp}; frame-ancestors 'none'"
    return response
