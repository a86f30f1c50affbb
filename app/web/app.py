"""`create_app(settings)`: the FastAPI app. Models and the database open in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from vrollout import __version__
from vrollout.config import Settings
from vrollout.errors import Cancelled, VRError
from vrollout.inputs.validation import Limits, describe, request_models
from vrollout.jobs.runner import JobRunner
from vrollout.jobs.tasks import Tasks
from vrollout.jobs.worker import ModelWorker
from vrollout.pipeline.analyzer import Analyzer
from vrollout.storage.jobs import Jobs
from vrollout.storage.retention import keep_retention
from vrollout.storage.store import Store, storage_error
from vrollout.web.bodies import bind_request_models, body_model
from vrollout.web.caching import GZIP_LEVEL, GZIP_MIN_BYTES, NOT_COMPRESSED, CachedStatic, RevalidatePages
from vrollout.web.defaults import form_defaults
from vrollout.web.docs import install_docs
from vrollout.web.json_scan import LongText
from vrollout.web.manual import router as manual_router
from vrollout.web.pages import make_templates
from vrollout.web.pages import router as pages_router
from vrollout.web.routes.analyses import router as api_router
from vrollout.web.routes.jobs import router as jobs_router
from vrollout.web.routes.localization import router as localization_router
from vrollout.web.routes.pedagogical import router as pedagogical_jobs_router
from vrollout.web.security import GuessLimit, HostGuard, SecurityHeaders, TokenGate, answered_hosts
from vrollout.web.security import router as login_router
from vrollout.web.server import quiet_accept_errors

log = logging.getLogger(__name__)


def error_body(status: int, message: str, **details: Any) -> dict[str, Any]:
    return {"ok": False, "error": message, "status": status, **details}


UPLOAD_PATHS = ("/api/jobs",)
# An upload's limit is on the file's bytes (the route checks them); its body also carries the
# multipart framing and the form's text fields (each at most 1 MiB, Starlette's part limit).
UPLOAD_FRAMING = 4 * 1024 * 1024
TEXT_TOO_LONG = (
    "a text in the request body is over {} characters, more than any field allows "
    "(VROLLOUT_MAX_CONTEXT_TOKENS or VROLLOUT_MAX_RESPONSE_TOKENS x VROLLOUT_CHARS_PER_TOKEN)"
)


class BodyLimit:
    """Request bodies: refused with 413 once over the limit, before they are read into memory
    (chunked ones too, which declare no length), and given `timeout` seconds to arrive, else 408
    and the connection is closed. Past either, this middleware answers and the app is told that
    the client went away (its own answer is dropped). Uploads of trajectory files have their own,
    larger limit, on the file's bytes. A JSON body with a text longer than any field allows
    (`max_text_chars`) is refused as soon as that text streams in (see `json_scan`)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        upload_limit: int,
        timeout: float = 120.0,
        max_text_chars: int | None = None,
    ) -> None:
        self.app, self.limit, self.upload_limit, self.timeout = app, limit, upload_limit, timeout
        self.max_text_chars = max_text_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["path"] in UPLOAD_PATHS
        limit = self.upload_limit + UPLOAD_FRAMING if upload else self.limit
        setting = "VROLLOUT_MAX_UPLOAD_BYTES" if upload else "VROLLOUT_MAX_REQUEST_BYTES"
        shown = self.upload_limit if upload else self.limit
        too_long = f"the request body is over the limit of {shown} bytes ({setting})"
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            response = JSONResponse(error_body(413, too_long), status_code=413)
            return await response(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        seen, body_done, started, answered = 0, False, False, False
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip()
        scan = None
        if self.max_text_chars is not None and not upload and content_type.endswith(b"json"):
            scan = LongText(self.max_text_chars)

        async def answer(status: int, message: str, **headers: str) -> Message:
            nonlocal answered
            if not started:
                response = JSONResponse(error_body(status, message), status, headers=headers)
                await response(scope, receive, send)
            answered = True
            return {"type": "http.disconnect"}

        async def limited() -> Message:
            nonlocal seen, body_done
            if answered:
                return {"type": "http.disconnect"}
            if body_done:  # e.g. a route waiting for the disconnect: no deadline
                return await receive()
            try:
                received = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                late = f"the request body did not arrive within {self.timeout:g} s (VROLLOUT_BODY_TIMEOUT_S)"
                return await answer(408, late, connection="close")
            seen += len(received.get("body", b""))
            if seen > limit:
                return await answer(413, too_long)
            if scan is not None and scan.feed(received.get("body", b"")):
                return await answer(413, TEXT_TOO_LONG.format(self.max_text_chars))
            body_done = received["type"] != "http.request" or not received.get("more_body", False)
            return received

        async def guarded(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = True
            await send(message)

        await self.app(scope, limited, guarded)


def _describe_validation(
    exc: RequestValidationError, model: type[BaseModel] | None = None
) -> tuple[int, str, list[dict[str, Any]]]:
    """In the words files and the Python API get (`inputs.validation.describe`): 413 for text over
    its character cap, else 422; a body's fields named as in the body (no `body.` prefix)."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = errors[0].get("ctx", {})
        details = [{"field": "body", "error": e.get("msg", "")} for e in errors]
        return 400, f"malformed JSON body: {ctx.get('error', 'cannot be parsed')}", details
    in_body = [
        {**e, "loc": tuple(e.get("loc", ()))[1:]} if e.get("loc", ())[:1] == ("body",) else e for e in errors
    ]
    return describe(in_body, model)


def install_error_handlers(app: FastAPI) -> None:
    """One place that maps every failure to the JSON error shape (pages get an HTML page)."""

    def respond(request: Request, status: int, message: str, **details: Any) -> Any:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse(error_body(status, message, **details), status)
        page = {"status": status, "message": message}
        return request.app.state.templates.TemplateResponse(request, "error.html", page, status_code=status)

    @app.exception_handler(VRError)
    async def on_vr_error(request: Request, exc: VRError) -> Any:
        response = respond(request, exc.status, exc.message, **exc.details)
        response.headers.update(getattr(exc, "headers", {}))  # e.g. Retry-After with a 429
        return response

    @app.exception_handler(Cancelled)
    async def on_cancelled(request: Request, exc: Cancelled) -> Any:
        return JSONResponse(error_body(499, str(exc)), 499)  # the client went away: for the log

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Any:
        status, message, details = _describe_validation(exc, body_model(request))
        return JSONResponse(error_body(status, message, details=details), status)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Any:
        return respond(request, exc.status_code, str(exc.detail))

    @app.exception_handler(sqlite3.Error)
    async def on_database(request: Request, exc: sqlite3.Error) -> Any:
        error = storage_error(exc, "the database failed")
        log.error("%s on %s", error.message, request.url.path)
        return respond(request, error.status, error.message)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> Any:
        log.exception("unhandled error on %s", request.url.path)
        return respond(request, 500, "internal error (see the server log)")


def create_app(settings: Settings | None = None, analyzer: Analyzer | None = None) -> FastAPI:
    """The app. Pass `analyzer` to reuse loaded models (tests); else the lifespan loads them."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.store = Store(settings.database)
        app.state.analyzer = analyzer or Analyzer.from_settings(settings)
        app.state.analyzer.store = app.state.store
        app.state.worker = ModelWorker(settings.max_queued_requests)
        loud_accept_errors = quiet_accept_errors(asyncio.get_running_loop())
        app.state.tasks = Tasks()
        app.state.jobs = Jobs(app.state.store)
        app.state.runner = JobRunner(app.state.jobs, app.state.analyzer, app.state.worker)
        runner = asyncio.get_running_loop().create_task(app.state.runner.run_forever())
        background = [runner]
        # Retention (where set) and compaction of what was deleted, hourly (storage/retention.py).
        sweep = keep_retention(app.state.jobs, settings.retention_days)
        background.append(asyncio.get_running_loop().create_task(sweep))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            app.state.worker.close()
            loud_accept_errors()

    app = FastAPI(
        title="Virtual Rollout",
        version=__version__,
        description=(
            "Replay a student's trajectory through a teacher, token by token: per-step "
            "log-probs, KL, ranks and the teacher's top-1 token at every prefix "
            "(the virtual rollout). Errors share one shape: "
            '`{"ok": false, "error": str, "status": int, ...}`.'
        ),
        lifespan=lifespan,
        docs_url=None,  # install_docs: Swagger UI from /static/vendor
        redoc_url=None,
    )
    # The last added runs first: compression, cache lifetimes, headers on every response, the
    # Host, the token, the body limit.
    app.add_middleware(
        BodyLimit,
        limit=settings.max_request_bytes,
        upload_limit=settings.max_upload_bytes,
        timeout=settings.body_timeout_s,
        max_text_chars=Limits.of(settings).longest_text,
    )
    app.state.guesses = GuessLimit(settings.login_max_failures, settings.login_window_s)
    app.add_middleware(
        TokenGate,
        token=settings.api_token,
        guesses=app.state.guesses,
        session_max_age_s=settings.session_max_age_s,
    )
    hosts = answered_hosts(settings.host, settings.allowed_hosts, settings.api_token)
    app.add_middleware(HostGuard, hosts=hosts)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RevalidatePages)  # web/caching.py: cache lifetimes, gzip
    app.add_middleware(
        GZipMiddleware,
        minimum_size=GZIP_MIN_BYTES,
        compresslevel=GZIP_LEVEL,
        exclude_content_types=NOT_COMPRESSED,
    )
    install_docs(app, token_required=settings.api_token is not None)
    install_error_handlers(app)
    app.include_router(bind_request_models(api_router, request_models(settings).bindings()))
    app.include_router(jobs_router)
    app.include_router(localization_router)
    app.include_router(pedagogical_jobs_router)
    app.include_router(pages_router)
    app.include_router(manual_router)  # /docs/PAGE.md: the manual, offline
    app.include_router(login_router)
    app.state.templates = make_templates(settings.templates_dir)
    # the API's defaults, as `/` and Upload show them (web/defaults.py)
    app.state.templates.env.globals["form_defaults"] = form_defaults
    app.mount("/static", CachedStatic(directory=settings.static_dir), name="static")
    return app
