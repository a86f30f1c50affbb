"""How `vrollout serve` runs uvicorn: connection limits and timeouts, as settings.

uvicorn has a keep-alive timeout and a connection cap (`limit_concurrency`: 503 past it), but no
deadline for a request's headers: a client that connects and sends nothing, or one header byte a
second, holds its connection (and a file descriptor) forever. `TimedH11Protocol` closes such a
connection after `header_timeout_s`; bodies have their own deadline (`BodyLimit` in web/app.py,
408). When the process runs out of file descriptors anyway, asyncio logs every failed accept()
with a traceback, thousands a second; `quiet_accept_errors` turns that into one line per window
with a count. Knows nothing about models.

Both read past the documented API (uvicorn's h11 protocol's `conn`, `transport` and `loop`;
an asyncio handle's `_callback` and `_args`): tests/web/test_server_pins.py pins what they rely
on, and pyproject pins uvicorn's major version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from vrollout.config import Settings

log = logging.getLogger(__name__)

ACCEPT_FAILED = "socket.accept() out of system resource"


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline, `header_timeout`, for two waits uvicorn leaves
    open: a request's line and headers (from the connection's start, or from the end of the
    previous response), and the rest of a body the app has already answered (e.g. after a 413:
    uvicorn reads and drops it so that the client can read the answer, but not forever)."""

    header_timeout: float = 10.0  # set per server by `timed_h11`
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting(self) -> bool:
        theirs, ours = self.conn.their_state, self.conn.our_state
        return theirs is h11.IDLE or (theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))

    def _watch(self) -> None:
        if not self._waiting():
            self._disarm()
        elif self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self._waiting() and not self.transport.is_closing():
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()


def timed_h11(header_timeout: float) -> type[H11Protocol]:
    """`TimedH11Protocol` with this deadline (uvicorn builds protocols from a class)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `vrollout serve` passes to `uvicorn.run`: every connection limit from the settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": timed_h11(settings.header_timeout_s),
        "ws": "none",  # no websockets here: no upgrade path to guard
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "backlog": settings.backlog,
        # X-Forwarded-For is believed only from the proxies named: uvicorn's default (loopback)
        # would let any local client choose its address, and so its wrong-token count.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        "log_level": "info",
    }


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The same server as a `uvicorn.Config` (tests and benchmarks run it in their own way)."""
    return uvicorn.Config(app, **{**uvicorn_options(settings), **overrides})


def stale_accept_retry(context: dict[str, Any]) -> bool:
    """Whether a loop error is asyncio's retry of a failed accept() after the listening socket
    was closed. After EMFILE, asyncio stops reading the socket and calls `_start_serving` again a
    second later; when the server shuts down within that second, the retry finds the socket
    closed (file descriptor -1) and raises ValueError, which the loop would log as a traceback.
    The server is going away on purpose: there is nothing to serve and nothing lost."""
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    args = getattr(handle, "_args", None) or ()
    return (
        isinstance(context.get("exception"), (ValueError, OSError))
        and getattr(callback, "__name__", "") == "_start_serving"
        and any(isinstance(arg, socket.socket) and arg.fileno() == -1 for arg in args)
    )


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, window_s: float = 10.0) -> Callable[[], None]:
    """Log failed accept() calls (e.g. EMFILE: out of file descriptors) once, then as one line
    per `window_s` with how many there were, instead of a traceback each. Other loop errors go
    to the handler that was there before. Returns a function that puts that handler back (behind
    a filter for `stale_accept_retry`)."""
    previous = loop.get_exception_handler()
    state = {"count": 0, "reporting": False}

    def report() -> None:
        if state["count"]:
            log.error("accept() failed %d more times in the last %.0f s", state["count"], window_s)
            state["count"] = 0
            loop.call_later(window_s, report)
        else:
            state["reporting"] = False

    def others(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if stale_accept_retry(context):
            log.debug("a failed accept() was retried after the server closed its socket: nothing to do")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            others(loop, context)
            return
        if state["reporting"]:
            state["count"] += 1
            return
        state["reporting"] = True
        log.error(
            "accept() failed: %s; new connections wait until connections close (further failures "
            "are counted, one line per %.0f s; see VROLLOUT_MAX_CONNECTIONS and `ulimit -n`)",
            context.get("exception"),
            window_s,
        )
        loop.call_later(window_s, report)

    loop.set_exception_handler(handler)
    # the retry can still fire while the loop winds down after the app's shutdown: keep it quiet
    return lambda: loop.set_exception_handler(others)
