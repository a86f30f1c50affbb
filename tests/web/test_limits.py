"""Model work bounded and fair, connections and bodies with limits: the worker's queue, lanes and
cancellation, cost budgets, body limits, and header and body deadlines on a real uvicorn (a
thread of this process, so that the tests can look at the worker). Tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from support import GOOD, REPO, assert_error, tiny_settings, upload
from vrollout.cli import commands as cli
from vrollout.errors import Cancelled
from vrollout.jobs.worker import ModelWorker
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app
from vrollout.web.server import TimedH11Protocol, quiet_accept_errors, uvicorn_config

# Greedy on the tiny model never stops early: about 10 s of generation, one step per token.
LONG_GENERATION = {"prompt": "hi", "generation": {"max_new_tokens": 1000}}
LONG_ROLLOUT = {"prompt": "hi", "generation": {"max_new_tokens": 1000}}


@pytest.fixture
def forward_calls(tiny):
    """Every forward pass of the tiny models, counted (they share weights: one hook)."""
    calls: list[int] = []
    handle = tiny.student.model.get_input_embeddings().register_forward_pre_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def app_with(tiny, tmp_path, **settings):
    settings = tiny_settings(tmp_path, **settings)
    return create_app(settings, analyzer=Analyzer(tiny, settings))


def client_with(tiny, tmp_path, **settings) -> TestClient:
    return TestClient(app_with(tiny, tmp_path, **settings), raise_server_exceptions=False)


@contextlib.contextmanager
def serving(tiny, tmp_path, **overrides) -> Iterator[tuple[str, object]]:
    """A real uvicorn, configured as `vrollout serve` configures it, on a free port."""
    settings = tiny_settings(tmp_path, port=0, **overrides)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until(condition: Callable[[], object], timeout: float = 10) -> float:
    """Seconds it took for `condition` to hold."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def occupy(worker: ModelWorker) -> threading.Event:
    """Hold the model worker with interactive work until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold(progress: object) -> None:
        started.set()
        release.wait(60)

    worker.submit(hold)
    assert started.wait(10)
    return release


def stored(client_or_url) -> int:
    if isinstance(client_or_url, str):
        return httpx.get(client_or_url + "/api/analyses").json()["total"]
    return client_or_url.get("/api/analyses").json()["total"]


# The queue ------------------------------------------------------------------------------------


def test_a_full_queue_is_refused_with_429_and_retry_after(tiny, tmp_path):
    with client_with(tiny, tmp_path, max_queued_requests=1) as client:
        worker = client.app.state.worker
        release = occupy(worker)
        try:
            waiting = worker.submit(lambda progress: None)  # the one waiting request allowed
            for path, body in (
                ("/api/analyze", GOOD),
                ("/api/tasks", GOOD),
                ("/api/pedagogical", {"prompt": "hi", "generation": {"max_new_tokens": 4}}),
            ):
                r = client.post(path, json=body)
                assert_error(r, 429, "VROLLOUT_MAX_QUEUED_REQUESTS")
                assert int(r.headers["retry-after"]) >= 1 and r.json()["retry_after"] >= 1
        finally:
            release.set()
        waiting.future.result(timeout=60)  # the queue is empty again (posting before it was a race)
        assert client.post("/api/analyze", json=GOOD).status_code == 200  # the queue, not the server
        assert stored(client) == 1


# Cancellation ---------------------------------------------------------------------------------


def test_a_request_whose_client_went_away_never_runs(tiny, tmp_path, forward_calls):
    with serving(tiny, tmp_path) as (url, app):
        worker = app.state.worker
        release = occupy(worker)
        try:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/api/analyze", json=GOOD, timeout=httpx.Timeout(10, read=0.5))
            wait_until(lambda: worker.describe()["queued"] == 0, timeout=5)  # taken off the queue
        finally:
            release.set()
        wait_until(lambda: not worker.describe()["running"])
        assert forward_calls == [] and stored(url) == 0
        assert httpx.post(url + "/api/analyze", json=GOOD, timeout=30).status_code == 200
        assert stored(url) == 1


@pytest.mark.parametrize("path,body", [("/api/analyze", LONG_GENERATION), ("/api/pedagogical", LONG_ROLLOUT)])
def test_a_running_request_stops_at_the_next_step_when_its_client_goes(
    tiny, tmp_path, path, body, forward_calls
):
    with serving(tiny, tmp_path) as (url, app):
        worker = app.state.worker
        with pytest.raises(httpx.ReadTimeout):  # the client leaves a fifth of the way in (~1 s of work here)
            httpx.post(url + path, json=body, timeout=httpx.Timeout(10, read=0.2))
        wait_until(lambda: not worker.describe()["running"], timeout=30)
        # Stopped part way: the whole request is at least one forward pass per token of 1,000.
        assert len(forward_calls) < 1000, len(forward_calls)
        assert stored(url) == 0


def test_a_task_can_be_cancelled_before_it_starts_or_while_it_runs(tiny, tmp_path):
    with client_with(tiny, tmp_path) as client:
        worker = client.app.state.worker

        def state(task_id: str) -> str:
            return client.get(f"/api/tasks/{task_id}").json()["state"]

        release = occupy(worker)
        try:
            queued = client.post("/api/tasks", json=GOOD).json()["task_id"]
            assert worker.describe()["queued"] == 1
            assert client.post(f"/api/tasks/{queued}/cancel").json()["cancel_requested"] is True
            wait_until(lambda: state(queued) == "cancelled", timeout=5)
            assert worker.describe()["queued"] == 0
        finally:
            release.set()
        running = client.post("/api/tasks", json=LONG_GENERATION).json()["task_id"]
        wait_until(lambda: state(running) == "running")
        client.post(f"/api/tasks/{running}/cancel")
        wait_until(lambda: state(running) == "cancelled", timeout=30)  # at its next step, not run to the end
        assert not worker.describe()["running"] and stored(client) == 0
        done = client.post("/api/tasks", json=GOOD).json()["task_id"]
        wait_until(lambda: state(done) == "done")
        assert client.post(f"/api/tasks/{done}/cancel").json()["state"] == "done"  # a finished task stays
        assert stored(client) == 1
        assert_error(client.post("/api/tasks/nope/cancel"), 404, "no task")


def test_work_cancelled_in_the_queue_never_runs_and_running_work_stops_at_a_step():
    worker = ModelWorker()
    steps: list[int] = []

    def long_work(progress) -> None:
        for i in range(10_000):
            progress("step", i, 10_000)
            steps.append(i)
            time.sleep(0.001)

    release = occupy(worker)
    queued = worker.submit(long_work)
    worker.cancel(queued)
    release.set()
    assert queued.future.cancelled() and steps == []
    running = worker.submit(long_work)
    wait_until(lambda: len(steps) > 5)
    worker.cancel(running)
    with pytest.raises(Exception, match="cancelled"):
        running.future.result(5)
    assert len(steps) < 10_000
    worker.close()


def test_a_cancelled_threshold_sweep_stops_inside_its_rollouts(tiny, tmp_path, forward_calls):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    body = {"prompt": "hi", "sweep": [0.1, 0.2], "generation": {"max_new_tokens": 40}}
    prep = analyzer.prepare_pedagogical(body)
    cancelled_at: list[int] = []

    def progress(stage: str, done: int, total: int) -> None:
        if cancelled_at:
            raise Cancelled("cancelled")
        if stage == "pedagogical" and done == total:  # the first rollout is done: cancel now
            cancelled_at.append(len(forward_calls))

    with pytest.raises(Cancelled):
        analyzer.pedagogical(prep, progress)
    # Within a step of the sweep's first rollout (2 passes a step), not after its 40 steps.
    assert len(forward_calls) - cancelled_at[0] <= 4


# Cost budgets ---------------------------------------------------------------------------------


def test_cost_budgets_are_refused_before_any_model_work(tiny, tmp_path, forward_calls):
    with client_with(tiny, tmp_path, max_analysis_cost=100, max_pedagogical_cost=64) as client:
        sweep = {"prompt": "hi", "sweep": [0.1, 0.2, 0.3], "generation": {"max_new_tokens": 20}}  # 80
        for path in ("/api/pedagogical", "/api/pedagogical/tasks"):
            assert_error(client.post(path, json=sweep), 413, "VROLLOUT_MAX_PEDAGOGICAL_COST")
        generate = {"prompt": "hi", "generation": {"max_new_tokens": 101}}
        branches = {"prompt": "hi", "response": "y" * 30, "continuation_tokens": 5}  # 5 x 30 tokens
        for body in (generate, branches):
            for path in ("/api/analyze", "/api/tasks"):
                assert_error(client.post(path, json=body), 413, "VROLLOUT_MAX_ANALYSIS_COST")
        assert_error(upload(client, json.dumps(branches)), 422, "VROLLOUT_MAX_ANALYSIS_COST")
        assert forward_calls == []
        ok = {"prompt": "hi", "response": "y" * 10, "continuation_tokens": 5}  # 50: within the budget
        assert client.post("/api/analyze", json=ok).status_code == 200
        assert client.post("/api/pedagogical", json={**sweep, "sweep": [0.1, 0.2]}).status_code == 200


# Fairness -------------------------------------------------------------------------------------


def test_the_worker_alternates_between_interactive_requests_and_job_lines():
    worker = ModelWorker()
    order: list[str] = []
    release = occupy(worker)
    try:
        work = [worker.submit(lambda progress, n=n: order.append(f"request {n}")) for n in range(3)]
        work += [worker.submit(order.append, f"line {n}", lane="jobs") for n in range(3)]
    finally:
        release.set()
    for item in work:
        item.future.result(5)
    worker.close()
    # A queue of requests does not starve the job, nor the job the requests.
    assert order == ["line 0", "request 0", "line 1", "request 1", "line 2", "request 2"]


def test_an_interactive_request_is_served_between_the_lines_of_a_running_job(tiny, tmp_path, monkeypatch):
    with client_with(tiny, tmp_path) as client:
        worker, order = client.app.state.worker, []
        submit = worker.submit

        def traced_submit(fn, *args, lane="interactive", progress=None):
            def traced(*a, **k):
                order.append("request" if lane == "interactive" else "job work")
                return fn(*a, **k)

            if lane == "interactive":
                order.append("request queued")
            return submit(traced, *args, lane=lane, progress=progress)

        monkeypatch.setattr(worker, "submit", traced_submit)
        line = json.dumps({**GOOD, "continuation_tokens": 1})  # never batched: one line per turn
        job = upload(client, "\n".join([line] * 80)).json()["job"]["id"]
        wait_until(lambda: client.get(f"/api/jobs/{job}").json()["done"] >= 2)
        assert client.post("/api/analyze", json=GOOD).status_code == 200
        assert client.get(f"/api/jobs/{job}").json()["state"] == "running"
        queued = order.index("request queued")
        assert order[queued + 1] == "request", order[queued - 2 : queued + 3]  # no job line before it


# Bodies ---------------------------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_naming_the_setting(tiny, tmp_path):
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 300
        yield b'", "response": "y"}'

    with client_with(tiny, tmp_path, max_request_bytes=1000) as client:
        r = client.post("/api/analyze", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "VROLLOUT_MAX_REQUEST_BYTES")


TEXTS = ["", "a", 'say "hi"', "back\\slash", "é😀\u2028\x00\n/", '\\"', "\\" * 7, "x" * 50]


@pytest.mark.parametrize("ascii_only", [True, False])
def test_the_body_scan_never_refuses_text_within_the_limit(ascii_only):
    import random

    from vrollout.web.json_scan import LongText

    rng = random.Random(0)
    for _ in range(3000):
        texts = [rng.choice(TEXTS) + rng.choice(TEXTS) for _ in range(3)]
        body = json.dumps({"prompt": texts[0], "x": [1, {texts[1]: texts[2]}]}, ensure_ascii=ascii_only)
        data, limit = body.encode(), max(len(t) for t in [*texts, "prompt"])  # keys are texts too
        scan, cuts = LongText(limit), sorted(rng.sample(range(len(data) + 1), 4))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert not any(scan.feed(piece) for piece in pieces), (body, limit)
    scan = LongText(1000)
    assert scan.feed(json.dumps({"prompt": "x" * 1001}).encode())  # plain text over it: refused


def test_a_prompt_over_every_cap_is_refused_while_it_streams(tiny, tmp_path):
    body = json.dumps({"response": "y", "prompt": "x" * 5_000_000}).encode()
    with client_with(tiny, tmp_path) as client:  # caps of 409,600 characters
        r = client.post("/api/analyze", content=body, headers={"content-type": "application/json"})
        assert_error(r, 413, "a text in the request body is over 409600 characters", "CHARS_PER_TOKEN")


def test_the_upload_limit_counts_the_files_bytes_not_the_multipart_framing(tiny, tmp_path):
    content = (json.dumps(GOOD) + "\n").encode() * 3
    with client_with(tiny, tmp_path, max_upload_bytes=len(content)) as client:
        assert upload(client, content).status_code == 201
        assert_error(upload(client, content + b" "), 413, "VROLLOUT_MAX_UPLOAD_BYTES")


# Connections on a real uvicorn ----------------------------------------------------------------


def closed_at(sock: socket.socket, trickle: bool = False, limit: float = 10) -> float:
    """When (`time.monotonic()`) the server closes `sock`; `trickle`: sending one more header
    byte every 0.2 s meanwhile."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < limit:
        try:
            if trickle:
                sock.sendall(b"X")
            if sock.recv(4096) == b"":
                return time.monotonic()
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
    raise AssertionError("still open")


def test_slow_headers_are_cut_off_and_health_stays_fast_with_idle_connections(tiny, tmp_path):
    with serving(tiny, tmp_path, header_timeout_s=1.0) as (url, app):
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        connected = time.monotonic()
        idle = [socket.create_connection(address) for _ in range(100)]
        slow = socket.create_connection(address)
        slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            with httpx.Client(base_url=url) as http:
                times = []
                for _ in range(20):
                    start = time.perf_counter()
                    assert http.get("/api/health").status_code == 200
                    times.append(time.perf_counter() - start)
            assert max(times) < 0.5, times
            assert 0.9 < closed_at(slow, trickle=True) - connected < 2.5  # one byte at a time: no help
            for sock in idle:
                assert closed_at(sock, limit=3) - connected < 2.5  # connected, sent nothing: closed
        finally:
            for sock in [*idle, slow]:
                sock.close()
        assert httpx.get(url + "/api/health").status_code == 200


def test_a_slow_body_gets_408_and_a_large_one_413_on_a_real_server(tiny, tmp_path):
    with serving(tiny, tmp_path, body_timeout_s=1.0, max_request_bytes=100_000) as (url, app):
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        with socket.create_connection(address) as sock:
            sock.sendall(
                b"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            sock.settimeout(5)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"VROLLOUT_BODY_TIMEOUT_S" in answer, answer

        def chunks() -> Iterator[bytes]:
            for _ in range(30):
                yield b" " * 10_000

        r = httpx.post(url + "/api/analyze", content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "VROLLOUT_MAX_REQUEST_BYTES")  # the client sent it all and reads the answer


def test_failed_accepts_are_logged_once_with_a_count(caplog):
    async def flood() -> None:
        loop = asyncio.get_running_loop()
        restore = quiet_accept_errors(loop, window_s=0.2)
        for _ in range(1000):
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many")}
            )
        await asyncio.sleep(0.5)
        restore()

    with caplog.at_level(logging.ERROR):
        asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records if "accept() failed" in r.getMessage()]
    assert len(lines) == 2 and "999 more times" in lines[1], lines
    assert all(r.exc_info is None for r in caplog.records)


def test_an_accept_retry_after_shutdown_is_not_a_traceback(caplog):
    """After EMFILE asyncio retries accept() a second later (`_start_serving`); a server that
    shut down meanwhile has closed its socket, and the retry raises ValueError on fd -1."""

    async def retry_on_a_closed_socket() -> None:
        loop = asyncio.get_running_loop()
        restore = quiet_accept_errors(loop, window_s=0.2)
        listener = socket.socket()
        listener.close()
        loop.call_soon(loop._start_serving, asyncio.Protocol, listener)  # what asyncio schedules
        loop.call_soon(loop.call_exception_handler, {"message": "another error", "exception": KeyError("x")})
        await asyncio.sleep(0.05)
        restore()  # the app has shut down; the loop still runs a while and the retry can fire then
        loop.call_soon(loop._start_serving, asyncio.Protocol, listener)
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(retry_on_a_closed_socket())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["another error"]  # other loop errors still logged
    assert "Invalid file descriptor" not in caplog.text
    assert sum("after the server closed its socket" in r.getMessage() for r in caplog.records) == 2


SERVE_FEW_FILES = """
import resource, sys
sys.path.insert(0, "tests")
import uvicorn
from support.tiny import tiny_pair
from vrollout.config import Settings
from vrollout.errors import Cancelled
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app
from vrollout.web.server import uvicorn_config
settings = Settings(database=sys.argv[1], port=int(sys.argv[2]), header_timeout_s=1.0)
app = create_app(settings, analyzer=Analyzer(tiny_pair(), settings))
config = uvicorn_config(app, settings, log_level="warning")
server = uvicorn.Server(config)
resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
server.run()
"""


def test_running_out_of_file_descriptors_logs_a_line_not_a_traceback_each(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE_FEW_FILES, str(tmp_path / "db.sqlite3"), str(port)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: server.poll() is None and health_ok(port), timeout=120)
        flood = []
        for _ in range(200):  # more than the server's 96 descriptors
            with contextlib.suppress(OSError):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        time.sleep(2.5)  # accept() fails for a while; the header deadline frees descriptors
        for sock in flood:
            sock.close()
        wait_until(lambda: health_ok(port), timeout=10)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    failures = [line for line in err.splitlines() if "accept() failed" in line]
    assert 1 <= len(failures) <= 3 and "Traceback" not in err, err[-3000:]
    assert len(err) < 5000, len(err)


def health_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_runs_uvicorn_with_the_connection_settings(monkeypatch, tmp_path, tiny_folder):
    started: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(options))
    monkeypatch.setenv("VROLLOUT_STUDENT", str(tiny_folder))
    for name, value in (("HEADER_TIMEOUT_S", "3"), ("KEEP_ALIVE_S", "2"), ("MAX_CONNECTIONS", "77"),
                        ("MAX_HEADER_BYTES", "4096"), ("BACKLOG", "64")):  # fmt: skip
        monkeypatch.setenv(f"VROLLOUT_{name}", value)
    assert cli.main(["serve", "--database", str(tmp_path / "db.sqlite3")]) == 0
    assert (started["limit_concurrency"], started["timeout_keep_alive"]) == (77, 2)
    assert (started["h11_max_incomplete_event_size"], started["backlog"]) == (4096, 64)
    assert issubclass(started["http"], TimedH11Protocol) and started["http"].header_timeout == 3.0
