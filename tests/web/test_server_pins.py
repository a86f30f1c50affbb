"""What web/server.py relies on beyond uvicorn's and asyncio's documented API, pinned here so
that an upgrade that moves it fails this file instead of a server in production.

`TimedH11Protocol` subclasses uvicorn's h11 protocol and reads its `conn`, `transport` and
`loop`; `stale_accept_retry` recognises asyncio's accept() retry by its handle's `_callback`
and `_args`. uvicorn's major version is pinned in pyproject (a new major is a deliberate
upgrade, checked against this file)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
from pathlib import Path

import pytest
import uvicorn
from packaging.requirements import Requirement
from packaging.version import Version
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState
from vrollout.web.server import TimedH11Protocol, stale_accept_retry, timed_h11

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_uvicorn_is_pinned_to_the_major_version_installed():
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (uvicorn_spec,) = [Requirement(d) for d in dependencies if Requirement(d).name == "uvicorn"]
    installed = Version(importlib.metadata.version("uvicorn"))
    assert uvicorn_spec.specifier.contains(installed), (uvicorn_spec, installed)
    next_major = Version(f"{installed.major + 1}.0")
    assert not uvicorn_spec.specifier.contains(next_major), f"pin uvicorn below {next_major}: {uvicorn_spec}"


def test_the_h11_protocol_has_what_the_timed_one_reads():
    async def made() -> H11Protocol:
        config = uvicorn.Config(app=lambda scope, receive, send: None)
        config.load()
        protocol = timed_h11(1.0)(config=config, server_state=ServerState(), app_state={})
        left, right = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, left)
        try:
            assert protocol.transport is transport and protocol.loop is asyncio.get_running_loop()
            assert protocol.conn.their_state is not None  # the h11 connection `_waiting` reads
            assert protocol._deadline is not None  # armed: the client has sent nothing yet
        finally:
            transport.close()
            right.close()
        return protocol

    protocol = asyncio.run(made())
    assert isinstance(protocol, TimedH11Protocol)
    for hook in ("connection_made", "data_received", "on_response_complete", "connection_lost"):
        assert getattr(H11Protocol, hook) is not getattr(TimedH11Protocol, hook)  # each one overridden


def test_asyncio_handles_carry_the_callback_and_arguments_read_by_stale_accept_retry():
    closed = socket.socket()
    closed.close()  # fileno() is now -1, as the listening socket after the server shut down

    def _start_serving(sock: socket.socket) -> None:
        pass

    loop = asyncio.new_event_loop()
    try:
        handle = loop.call_soon(_start_serving, closed)  # never run: the loop is closed unrun
        assert stale_accept_retry({"handle": handle, "exception": ValueError("fd -1")})
        assert not stale_accept_retry({"handle": handle, "exception": RuntimeError("other")})
    finally:
        loop.close()
