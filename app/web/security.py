"""Access and browser hardening: the Host a request names (DNS rebinding), the optional API
token (a header, or the login page's cookie) with a limit on wrong guesses, writes from other
sites, and the security headers of every response. All pure ASGI middleware, so static files and
event streams are covered too. Knows nothing about models or trajectories."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "vrollout_session"
PUBLIC_PATHS = frozenset({"/login", "/logout", "/static/app.css"})  # the login page and its style
CLOCK_SKEW_S = 60  # a session issued this far "in the future" still passes (the clock was set back)

# The app's pages run only its own scripts. Plotly sets inline styles, hence 'unsafe-inline'
# for styles only.
APP_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": APP_CSP,
}


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


LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
EVERY_INTERFACE = frozenset({"0.0.0.0", "::", ""})


def host_name(value: str) -> str:
    """The name alone, in lower case, of a Host header or an address: `[::1]:8000` -> `::1`,
    `Box.example:80` -> `box.example`, `::1` -> `::1`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.partition(":")[0] if value.count(":") == 1 else value


def answered_hosts(host: str, allowed: list[str], token: str | None) -> frozenset[str] | None:
    """The Host names a server answers to, or None for any. A DNS-rebinding page (a name of the
    attacker's that now resolves to 127.0.0.1) reaches a loopback server as a same-origin page of
    its own; only the Host header it sends gives it away. No check is needed with a token (such a
    page cannot present it) or when bound to every interface (deliberately public: any name may
    reach it, and `serve` warns when that has no token); "*" in the list turns the check off."""
    names = {host_name(h) for h in allowed}
    if token is not None or host_name(host) in EVERY_INTERFACE or "*" in names:
        return None
    return frozenset(names | LOOPBACK | {host_name(host)})


class HostGuard:
    """Refuse requests that name a host this server does not answer to (see `answered_hosts`).
    The port is not compared: a request that arrived has reached this port, whatever it says,
    and a proxy in front may name another."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.hosts is None:
            return await self.app(scope, receive, send)
        given = HTTPConnection(scope).headers.get("host")
        if given is None or host_name(given) in self.hosts:  # no Host: not a browser
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        message = (
            f"this server does not answer to the host {host_name(given)[:100]!r} (it answers to "
            f"{', '.join(sorted(self.hosts))}): to use that name, add it to VROLLOUT_ALLOWED_HOSTS "
            "or set VROLLOUT_API_TOKEN"
        )
        response = JSONResponse({"ok": False, "error": message, "status": 400}, 400)
        await response(scope, receive, send)


class GuessLimit:
    """At most `limit` wrong tokens per client address in any `window` seconds; past that, every
    attempt from the address is refused (a right token too: else guessing would go on) until its
    oldest failure leaves the window. Remembers at most `keep` addresses. Used on the event loop
    only (middleware and async routes), so it needs no lock."""

    def __init__(self, limit: int, window: float, keep: int = 10_000) -> None:
        self.limit, self.window, self.keep = limit, window, keep
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int:
        """0 if `client` may try now, else the whole seconds until it may."""
        times = self._failures.get(client)
        if times is None:
            return 0
        now = time.monotonic()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, deque()).append(time.monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > self.keep:
            self._failures.popitem(last=False)

    def forget(self, client: str) -> None:
        self._failures.pop(client, None)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def too_many(wait: int) -> str:
    return f"too many wrong API tokens from this address: try again in {wait} s (VROLLOUT_LOGIN_MAX_FAILURES)"


def session_value(token: str, issued: int | None = None) -> str:
    """What the login cookie holds: when it was issued (Unix seconds) and an HMAC, keyed by the
    token, of that time; never the token itself. Changing the token logs everyone out."""
    issued = int(time.time()) if issued is None else issued
    mac = hmac.new(token.encode(), f"vrollout-session:{issued}".encode(), hashlib.sha256).hexdigest()
    return f"{issued}.{mac}"


def session_age(value: str | None, token: str) -> float | None:
    """The seconds since a session cookie was issued, if this server issued it with `token`
    (its HMAC matches); else None."""
    issued, _, _ = (value or "").partition(".")
    if not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
        return None
    return time.time() - int(issued) if same(value, session_value(token, int(issued))) else None


def session_valid(value: str | None, token: str, max_age_s: float) -> bool:
    """`value` is a session cookie this server issued with `token`, less than `max_age_s` ago.
    The age is checked here, not left to the browser's Max-Age: a copied cookie expires too."""
    age = session_age(value, token)
    return age is not None and -CLOCK_SKEW_S <= age <= max_age_s


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
    error shape. Wrong tokens count against `guesses` (a 429 past its limit). Token or not, a
    browser's cross-site request may change nothing (CSRF: a form on another site posting a file
    to /api/jobs needs no cookie when there is no token)."""

    def __init__(
        self, app: ASGIApp, token: str | None, guesses: GuessLimit, session_max_age_s: float = 7 * 86400
    ) -> None:
        self.app, self.token, self.guesses = app, token, guesses
        self.session_max_age_s = session_max_age_s

    def presented(self, conn: HTTPConnection) -> bool:
        """A credential was sent: a header, or a session cookie other than one of ours that has
        expired (a login that ran out is not a guess; it is sent back to the login page)."""
        if any(k in conn.headers for k in ("authorization", "x-api-token")):
            return True
        cookie = conn.cookies.get(SESSION_COOKIE)
        if cookie is None:
            return False
        assert self.token is not None
        age = session_age(cookie, self.token)
        return age is None or age <= self.session_max_age_s

    def authorised(self, conn: HTTPConnection) -> bool:
        assert self.token is not None
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        return (
            (scheme.lower() == "bearer" and same(credentials.strip(), self.token))
            or same(conn.headers.get("x-api-token"), self.token)
            or session_valid(conn.cookies.get(SESSION_COOKIE), self.token, self.session_max_age_s)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        if scope["type"] == "http" and cross_site_write(conn):
            message = "a request from another site may not change anything here"
            response: Response = JSONResponse({"ok": False, "error": message, "status": 403}, 403)
            return await response(scope, receive, send)
        if self.token is None or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        if self.presented(conn):  # a guess, right or wrong
            wait = self.guesses.retry_after(client_address(conn))
            if wait:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                body = {"ok": False, "error": too_many(wait), "status": 429}
                response = JSONResponse(body, 429, headers={"Retry-After": str(wait)})
                return await response(scope, receive, send)
            if self.authorised(conn):
                return await self.app(scope, receive, send)
            self.guesses.failed(client_address(conn))
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
    """A browser's request from a page of another site that is not a read. Browsers name the
    site in Sec-Fetch-Site; older ones (and some privacy modes) send only Origin, which must then
    name this host. A request with neither is not a browser's (curl, notebooks)."""
    if conn.scope["method"] in ("GET", "HEAD", "OPTIONS"):
        return False
    site = conn.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("cross-site", "same-site")
    origin = conn.headers.get("origin")
    if origin is None:
        return False
    # "null" (a sandboxed frame, a file) has no host: never this one. The scheme is not compared:
    # a proxy that ends TLS turns https into http.
    return urlsplit(origin).netloc.lower() != conn.headers.get("host", "").lower()


def wants_page(conn: HTTPConnection) -> bool:
    return (
        conn.scope.get("method") in ("GET", "HEAD")
        and not conn.url.path.startswith("/api/")
        and "text/html" in conn.headers.get("accept", "")
    )


router = APIRouter(include_in_schema=False)


def login_page(
    request: Request, next_path: str, error: str | None = None, status: int = 200, **headers: str
) -> Response:
    context = {"next": local_path(next_path), "error": error, "standalone": True}  # no nav
    templates = request.app.state.templates
    return templates.TemplateResponse(request, "login.html", context, status_code=status, headers=headers)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:
    return login_page(request, next)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"
) -> Response:
    """Check the token; on success set the session cookie and go back where the user was going.
    Wrong tokens count against the same limit as wrong headers (429 with Retry-After past it)."""
    expected = request.app.state.settings.api_token
    guesses: GuessLimit = request.app.state.guesses
    client = client_address(request)
    if expected is not None and (wait := guesses.retry_after(client)):
        return login_page(request, next, too_many(wait), 429, **{"Retry-After": str(wait)})
    if expected is not None and not same(token, expected):
        guesses.failed(client)
        return login_page(request, next, "That is not this server's API token.", 401)
    response = RedirectResponse(local_path(next), status_code=303)
    if expected is not None:
        guesses.forget(client)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(expected),
            max_age=request.app.state.settings.session_max_age_s,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Drop the session cookie and show the login page. Open without a token (there may be
    nothing left to log out of); a cross-site POST is refused before it gets here (TokenGate)."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response
