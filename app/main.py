"""`create_app(settings)`: the FastAPI app. Models and the database open in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .api import router as api_router
from .config import Settings
from .errors import TooLong, VRError
from .pages import make_templates
from .pages import router as pages_router
from .service import Analyzer, ModelWorker
from .storage import Store
from .tasks import Tasks

log = logging.getLogger(__name__)


def error_body(status: int, message: str, **details: Any) -> dict[str, Any]:
    return {"ok": False, "error": message, "status": status, **details}


class BodyLimit:
    """Refuse request bodies over `limit` bytes before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse(error_body(413, self._message()), status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLong(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is over the limit of {self.limit} bytes (VROLLOUT_MAX_REQUEST_BYTES)"


def _describe_validation(exc: RequestValidationError) -> tuple[int, str, list[dict[str, Any]]]:
    errors = exc.errors()
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "error": e.get("msg", "")} for e in errors
    ]
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = errors[0].get("ctx", {})
        return 400, f"malformed JSON body: {ctx.get('error', 'cannot be parsed')}", details
    first = details[0] if details else {"field": "body", "error": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return 422, f"{first['field']}: {first['error']}{more}", details


def install_error_handlers(app: FastAPI) -> None:
    """One place that maps every failure to the JSON error shape (pages get an HTML page)."""

    def respond(request: Request, status: int, message: str, **details: Any) -> Any:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse(error_body(status, message, **details), status)
        page = {"status": status, "message": message}
        return request.app.state.templates.TemplateResponse(request, "error.html", page, status_code=status)

    @app.exception_handler(VRError)
    async def on_vr_error(request: Request, exc: VRError) -> Any:
        return respond(request, exc.status, exc.message, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Any:
        status, message, details = _describe_validation(exc)
        return JSONResponse(error_body(status, message, details=details), status)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Any:
        return respond(request, exc.status_code, str(exc.detail))

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
        app.state.analyzer = analyzer or Analyzer.from_settings(settings, store=False)
        app.state.analyzer.store = app.state.store
        app.state.worker = ModelWorker()
        app.state.tasks = Tasks()
        try:
            yield
        finally:
            app.state.worker.close()

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
    )
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(pages_router)
    app.state.templates = make_templates(settings.templates_dir)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    return app
