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
from vrollout.metrics.signal import headline
from vrollout.report.figures import figure_dict
from vrollout.storage.store import SQLITE_MAX_INT
from vrollout.web.routes.analyses import AnalyzerDep, StoreDep
from vrollout.web.routes.jobs import JobsDep, RunnerDep
from vrollout.web.security import standalone_csp

# plotly.js "basic" (scatter, bar, pie), vendored: it must match the plotly.js major version
# that the Python plotly package writes figures for (tests/test_pages.py checks).
PLOTLY_BUNDLE = "vendor/plotly-basic-4.1.1.min.js"
PLOTLY_URL = f"/static/{PLOTLY_BUNDLE}"

router = APIRouter(include_in_schema=False)
PER_PAGE = 50  # stored analyses per page of /analyses


def show_token(token: str) -> str:
    """Whitespace made visible for the token strip (the template escapes the result)."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def make_templates(folder: Path) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(folder))  # autoescape on for .html
    env = templates.env
    env.filters["show_token"] = show_token
    env.filters["bits"] = lambda nats: None if nats is None else nats / math.log(2)
    env.globals["plotly_url"] = PLOTLY_URL
    env.globals["headline"] = headline  # the analysis page's one-line answer (core/signal.py)
    return templates


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
    return {"a": analysis, "s": analysis["summary"], "figure_json": figure}


@router.get("/analyses/{analysis_id}", response_class=HTMLResponse)
async def analysis_page(request: Request, analysis_id: str, store: StoreDep) -> Response:
    context = await _analysis_context(store, analysis_id)
    limit = request.app.state.settings.max_new_tokens
    return await render(request, "analysis.html", {**context, "standalone": False, "max_new_tokens": limit})


def standalone_assets(static: Path, script: str) -> tuple[dict[str, Any], str]:
    """What a one-file page inlines (the CSS; plotly.js, common.js and the page's `script`, in
    the order base.html runs them) and the policy that allows exactly those scripts (the file
    carries it in a <meta> element: the header is gone once it is saved)."""
    scripts = [(static / name).read_text() for name in (PLOTLY_BUNDLE, "common.js", script)]
    inline = {"inline_css": (static / "app.css").read_text(), "inline_scripts": scripts}
    return inline, standalone_csp(*scripts)


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
