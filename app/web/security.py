"""Access and browser hardening: the optional API token (a header, or the login page's cookie)
and the security headers of every response. Both are pure ASGI middleware, so static files and
event streams are covered too. Knows nothing about models or trajectories."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "vrollout_session"
PUBLIC_PATHS = frozenset({"/login", "/static/app.css"})  # the login page and its style

# The app's pages run only its own scripts. Plotly sets inline styles, hence 'unsafe-inline'
# for styles only.
APP_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
# Swagger UI as FastAPI serves it: its script and style from a CDN, one inline script (by hash).
SWAGGER_CDN = "https://cdn.jsdelivr.net"
SWAGGER_FAVICON = "https://fastapi.tiangolo.com"
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": APP_CSP,
}


def script_hashes(*scripts: str) -> str:
    """CSP sources that allow exactly these inline scripts (the text between the tags)."""
    digests = (hashlib.sha256(s.encode()).digest() for s in scripts)
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)


def standalone_csp(*scripts: str) -> str:
    """A one-file page that opens offline (download, report): its own inline scripts run, nothing
    is fetched. Fit for a <meta> element too (which ignores frame-ancestors, so it has none)."""
    return (
        f"default-src 'none'; script-src {script_hashes(*scripts)}; style-src 'unsafe-inline'; "
        "img-src data: blob:; object-src 'none'; base-uri 'none'; form-action 'none'"
    )


class SecurityHeaders:
    """Every response gets the headers above; a route may set its own Content-Security-Policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def session_value(token: str) -> str:
    """What the login cookie holds: an HMAC of the token, not the token itself."""
    return hmac.new(token.encode(), b"vrollout-session", hashlib.sha256).hexdigest()


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def local_path(target: str | None) -> str:
    """`target` if it is a path on this site, else "/": logging in never sends anyone elsewhere."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x20 or c == "\\" for c in target):  # browsers drop tabs and newlines
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


class TokenGate:
    """With an API token set, nothing but the login page answers without it: API clients send
    `Authorization: Bearer TOKEN` (or `X-API-Token`), browsers hold the login cookie (which
    EventSource sends too). Pages redirect to /login; everything else gets a 401 in the API's
    error shape. Token or not, a browser's cross-site request may change nothing (CSRF: a form
    on another site posting a file to /api/jobs needs no cookie when there is no token)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    def authorised(self, conn: HTTPConnection) -> bool:
        assert self.token is not None
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        return (
            (scheme.lower() == "bearer" and same(credentials.strip(), self.token))
            or same(conn.headers.get("x-api-token"), self.token)
            or same(conn.cookies.get(SESSION_COOKIE), session_value(self.token))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        if scope["type"] == "http" and cross_site_write(conn):
            message = "a request from another site may not change anything here"
            response: Response = JSONResponse({"ok": False, "error": message, "status": 403}, 403)
            return await response(scope, receive, send)
        if self.token is None or scope["path"] in PUBLIC_PATHS or self.authorised(conn):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if wants_page(conn):
            target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            message = "an API token is required: send `Authorization: Bearer TOKEN` (or log in at /login)"
            body = {"ok": False, "error": message, "status": 401}  # the API's error shape
            response = JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def cross_site_write(conn: HTTPConnection) -> bool:
    """A browser's request, from a page of another site (browsers say so), that is not a read."""
    site = conn.headers.get("sec-fetch-site")
    return conn.scope["method"] not in ("GET", "HEAD", "OPTIONS") and site in ("cross-site", "same-site")


def wants_page(conn: HTTPConnection) -> bool:
    return (
        conn.scope.get("method") in ("GET", "HEAD")
        and not conn.url.path.startswith("/api/")
        and "text/html" in conn.headers.get("accept", "")
    )


router = APIRouter(include_in_schema=False)


def login_page(request: Request, next_path: str, error: str | None = None, status: int = 200) -> Response:
    context = {"next": local_path(next_path), "error": error, "standalone": True}  # no nav
    return request.app.state.templates.TemplateResponse(request, "login.html", context, status_code=status)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:
    return login_page(request, next)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"
) -> Response:
    """Check the token; on success set the session cookie and go back where the user was going."""
    expected = request.app.state.settings.api_token
    if expected is not None and not same(token, expected):
        return login_page(request, next, "That is not this server's API token.", 401)
    response = RedirectResponse(local_path(next), status_code=303)
    if expected is not None:
        response.set_cookie(
            SESSION_COOKIE,
            session_value(expected),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) with a policy that allows exactly what it loads. (No /redoc: one manual.)"""
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API",
        swagger_ui_parameters={"validatorUrl": None},  # no badge image from a third party
    )
    body = bytes(page.body).decode()
    inline = re.findall(r"<script>(.*?)</script>", body, re.S)
    csp = (
        f"default-src 'self'; script-src {SWAGGER_CDN} {script_hashes(*inline)}; "
        f"style-src 'self' 'unsafe-inline' {SWAGGER_CDN}; img-src 'self' data: {SWAGGER_FAVICON}; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return HTMLResponse(body, headers={"Content-Security-Policy": csp})
