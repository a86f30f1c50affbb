"""HTML pages: renderings of the same data the JSON API returns (datasette style)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from vrollout.report.figures import figure_dict, quadrant_figure
from vrollout.report.pages import standalone_assets, template_env
from vrollout.storage.store import SQLITE_MAX_INT
from vrollout.web.routes.analyses import AnalyzerDep, StoreDep
from vrollout.web.routes.jobs import JobsDep, RunnerDep

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


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, jobs: JobsDep) -> Response:
    items = await run_in_threadpool(jobs.list)
    return await render(request, "jobs.html", {"jobs": items})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str, runner: RunnerDep) -> Response:
    job = await run_in_threadpool(runner.state, job_id)
    localization = await run_in_threadpool(runner.jobs.has_localization_lines, job_id)
    return await render(request, "job.html", {"job": job, "localization": localization})


@router.get("/analyses", response_class=HTMLResponse)
async def analyses_page(
    request: Request,
    store: StoreDep,
    page: Annotated[int, Query(ge=1, le=SQLITE_MAX_INT // PER_PAGE)] = 1,
) -> Response:
    per_page = PER_PAGE
    items, total = await run_in_threadpool(store.list, per_page, (page - 1) * per_page)
    return await render(
        request,
        "analyses.html",
        {"items": items, "total": total, "page": page, "pages": max(1, math.ceil(total / per_page))},
    )


async def _analysis_context(store: Any, analysis_id: str) -> dict[str, Any]:
    analysis = await run_in_threadpool(store.get, analysis_id)
    figure = await run_in_threadpool(figure_json, analysis)
    quadrants = quadrant_figure(analysis)  # TIP's scatter (docs/objectives.md); None: not computed
    quadrant_json = None if quadrants is None else script_json(json.dumps(quadrants))
    return {"a": analysis, "s": analysis["summary"], "figure_json": figure, "quadrant_json": quadrant_json}


@router.get("/analyses/{analysis_id}", response_class=HTMLResponse)
async def analysis_page(request: Request, analysis_id: str, store: StoreDep) -> Response:
    context = await _analysis_context(store, analysis_id)
    limit = request.app.state.settings.max_new_tokens
    return await render(request, "analysis.html", {**context, "standalone": False, "max_new_tokens": limit})


@router.get("/analyses/{analysis_id}/download", response_class=HTMLResponse)
async def analysis_download(request: Request, analysis_id: str, store: StoreDep) -> Response:
    """One self-contained HTML file (plotly.js, CSS and script inlined) that opens offline."""
    context = await _analysis_context(store, analysis_id)
    static = request.app.state.settings.static_dir
    inline, csp = await run_in_threadpool(standalone_assets, static, "analysis.js")
    response = await render(request, "analysis.html", {**context, **inline, "csp": csp, "standalone": True})
    response.headers["Content-Disposition"] = f'attachment; filename="analysis-{analysis_id}.html"'
    response.headers["Content-Security-Policy"] = f"{csp}; frame-ancestors 'none'"
    return response
