"""Issue #24, item 7: upload validation is bounded and ends with its client. At most
MAX_VALIDATIONS uploads are validated at once (429 with Retry-After past that); a client that
goes away stops its validation at the next row and gets no job; rows are read one at a time and
the kept lines held as their JSON text, so an upload costs about its size, not the 25 times its
decoded Python objects cost.

A validation is held for real: the test takes the requests' math-verify helpers (verdicts
.math_check), so an upload whose lines ask for siblings waits in its sibling index."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from support import tiny_settings, upload
from support.live import live_app
from vrollout.errors import Cancelled
from vrollout.pipeline.analyzer import Analyzer
from vrollout.verdicts import math_check
from vrollout.web.app import create_app
from vrollout.web.routes.jobs import MAX_VALIDATIONS, VALIDATION_RETRY_S, validate_lines

# Lines that ask for a sibling and need a math check to be judged: validating them waits for a
# helper of the requests' lane.
SIBLING_LINES = "\n".join(
    json.dumps({"prompt": "what is 2+2?", "response": rf"so \boxed{{{4 + i % 2}}}", "reference_answer": "4"})
    for i in range(40)
)
WAIT_S = 60  # a bound for what must happen (never a measure of speed)


@contextmanager
def requests_lane_held() -> Iterator[threading.Event]:
    """Every helper slot of the requests' lane taken until the block ends or the event is set."""
    pool, release = math_check._POOLS["requests"], threading.Event()
    for _ in range(math_check.REQUEST_POOL_SIZE):
        pool.slots.acquire()
    released = threading.Lock()
    done = []

    def give_back() -> None:
        with released:
            if not done:
                done.append(True)
                for _ in range(math_check.REQUEST_POOL_SIZE):
                    pool.slots.release()

    release.give_back = give_back  # type: ignore[attr-defined]
    try:
        yield release
    finally:
        give_back()


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def busy(app) -> int:
    found = getattr(app.state, "validations", None)
    return 0 if found is None else found.busy


def test_past_the_validations_allowed_an_upload_gets_429_with_retry_after(tiny, tmp_path):
    settings = tiny_settings(tmp_path)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    with TestClient(app) as client:
        answers: list[int] = []
        with requests_lane_held():
            held = [
                threading.Thread(
                    target=lambda: answers.append(
                        upload(client, SIBLING_LINES, teacher_context="sibling").status_code
                    )
                )
                for _ in range(MAX_VALIDATIONS)
            ]
            for thread in held:
                thread.start()
            until(lambda: busy(app) == MAX_VALIDATIONS, "the uploads did not start validating")
            resp = upload(client, '{"prompt": "hi", "response": "hello"}')
            assert resp.status_code == 429, resp.text
            assert resp.headers["retry-after"] == str(VALIDATION_RETRY_S)
            assert "uploads are being validated" in resp.json()["error"]
        for thread in held:
            thread.join(WAIT_S)
        assert answers == [201] * MAX_VALIDATIONS
        assert busy(app) == 0
        resp = upload(client, '{"prompt": "hi", "response": "hello"}')
        assert resp.status_code == 201, resp.text


def test_a_validation_whose_client_left_stops_at_the_next_row(tiny, tmp_path):
    settings = tiny_settings(tmp_path)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="the client went away"):
        validate_lines(Analyzer(tiny, settings), b'{"prompt": "hi", "response": "x"}', {}, None, stop=stop)


def multipart_upload(port: int, text: str, **form: str) -> bytes:
    boundary = "vrolloutboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in form.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="runs.jsonl"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n{text}\r\n--{boundary}--\r\n"
    )
    body = "".join(parts).encode()
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.slow  # a live server: a client can only leave a real connection
def test_a_client_that_leaves_mid_validation_gets_no_job(tiny, tmp_path):
    with live_app(tiny, tmp_path, allowed_hosts="127.0.0.1") as (app, port):
        with requests_lane_held() as lane:
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(multipart_upload(port, SIBLING_LINES, teacher_context="sibling"))
            until(lambda: busy(app) == 1, "the upload did not start validating")
            client.close()  # the client leaves while its sibling index waits for a check
            time.sleep(0.5)  # let the server read the disconnect (the outcome does not depend on it)
            lane.give_back()
            until(lambda: busy(app) == 0, "the validation did not end")
        jobs = httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=30).json()
        assert jobs == []


def test_an_upload_costs_about_its_size_in_memory(tiny, tmp_path):
    """Lines padded with arrays of empty lists (each `[]` 3 bytes of the file, 64 or more bytes as a
    Python list): held as decoded objects, the file took 25 times its size."""
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    pad = "[" + ",".join(["[]"] * 5_000) + "]"
    line = json.dumps({"prompt": "hi", "response": "hello", "meta": {"pad": "PAD"}}).replace('"PAD"', pad)
    data = ("[" + ",".join([line] * 40) + "]").encode()  # a JSON array of 40 such lines, 600 kB
    validate_lines(analyzer, f"[{line}]".encode(), {}, None)  # first use: imports, caches
    tracemalloc.start()
    try:
        good, rejected, _ = validate_lines(analyzer, data, {}, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(good) == 40 and not rejected
    assert json.loads(good[0][1])["meta"]["pad"] == [[]] * 5_000
    # the kept lines as JSON text (about the file's size) and one line at a time as objects
    assert peak < 4 * len(data), (peak, len(data))
