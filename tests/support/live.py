"""A real uvicorn serving the app in a thread of the test's own process, so a test can count this
process's file descriptors and memory and look at the app's state."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app

from support import free_port, tiny_settings


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def live_app(tiny, tmp_path, **overrides) -> Iterator[tuple[object, int]]:
    """The app on a real uvicorn in a thread of this process: (app, port)."""
    settings = tiny_settings(tmp_path, **overrides)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    port = free_port()
    with running(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")):
        yield app, port


@contextmanager
def running(config: uvicorn.Config) -> Iterator[None]:
    """A uvicorn server on `config`, in a thread of this process, until the block ends."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)
