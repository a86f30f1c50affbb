"""Job progress streams against a real uvicorn (in a thread, so the test can count this
process's file descriptors and look at the app): shared state, caps, keep-alive, idle timeout,
and nothing left open after hundreds of clients come and go."""

from __future__ import annotations

import asyncio
import gc
import json
import time

from support import GOOD
from support.live import live_app, open_fds


def running_job(app, lines: int = 3) -> str:
    """A job that stays `running` until the test changes it (no model work: the runner only
    picks queued jobs)."""
    jobs = app.state.jobs
    job_id = jobs.create("held.jsonl", {}, [(n, GOOD) for n in range(1, lines + 1)], [])
    jobs.set_state(job_id, "running")
    return job_id


async def request_head(port: int, path: str) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """(status, reader, writer, the response's head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split()[1]), reader, writer, head


async def read_event(reader: asyncio.StreamReader) -> tuple[str | None, dict | None]:
    """The next event of a chunked event stream: (name, data); comments are skipped."""
    event = data = None
    while True:
        line = (await reader.readline()).decode().rstrip("\r\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            return event, data


async def stream_clients(port: int, path: str, clients: int, hold: float) -> list[int]:
    """`clients` streams at once; each reads its first event, stays `hold` s, and goes away
    (half of them cleanly, half by dropping the socket)."""

    async def one(n: int) -> int:
        status, reader, writer, _ = await request_head(port, path)
        if status == 200:
            assert (await read_event(reader))[0] == "progress"
            await asyncio.sleep(hold)
        if n % 2:
            writer.transport.abort()
        else:
            writer.close()
            await writer.wait_closed()
        return status

    return list(await asyncio.gather(*(one(n) for n in range(clients))))


def settle(expected: int, timeout: float = 15.0) -> int:
    deadline = time.time() + timeout
    while (now := open_fds()) > expected and time.time() < deadline:
        time.sleep(0.1)
    return now


def test_four_hundred_stream_clients_leave_nothing_open(tiny, tmp_path):
    """Every database connection and every stream is closed when it ends, not when the garbage
    collector gets to it: with the collector off, descriptors return to the idle level."""
    with live_app(tiny, tmp_path, max_streams=500, max_streams_per_job=500) as (app, port):
        job_id = running_job(app)
        path = f"/api/jobs/{job_id}/events"
        asyncio.run(stream_clients(port, path, 2, 0.1))  # warm up: thread pool, database files
        gc.collect()
        gc.disable()
        try:
            idle = settle(open_fds())
            statuses = asyncio.run(stream_clients(port, path, 400, 0.5))
            assert statuses == [200] * 400
            after = settle(idle)
            feed = app.state.runner.feed
            deadline = (
                time.time() + 15
            )  # a stream's subscription ends when its task does, just after the socket
            while (feed.total or feed.entries) and time.time() < deadline:
                time.sleep(0.05)
            assert feed.total == 0 and feed.entries == {}
        finally:
            gc.enable()
    assert after <= idle + 2, f"{after - idle} descriptors more than idle ({idle})"


def test_requests_close_their_database_connections(tiny_client):
    """Pages, API reads and exports: no connection is left to the garbage collector."""
    job_id = tiny_client.post("/api/jobs", files={"file": ("a.jsonl", json.dumps(GOOD).encode())}).json()[
        "job"
    ]["id"]
    while tiny_client.get(f"/api/jobs/{job_id}").json()["state"] != "done":
        time.sleep(0.05)
    paths = [
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/items",
        f"/api/jobs/{job_id}/summaries?format=csv",
        f"/api/jobs/{job_id}/steps",
        f"/api/jobs/{job_id}/figures",
        "/api/jobs",
        "/api/analyses",
        f"/jobs/{job_id}",
        "/analyses",
    ]
    for path in paths:  # warm up
        assert tiny_client.get(path).status_code == 200, path
    gc.collect()
    gc.disable()
    try:
        idle = open_fds()
        for _ in range(20):
            for path in paths:
                tiny_client.get(path)
        after = settle(idle, timeout=5)
    finally:
        gc.enable()
    assert after <= idle + 2, f"{after - idle} descriptors more than idle ({idle})"


def test_streams_share_one_state_computed_once_per_change(tiny, tmp_path):
    with live_app(tiny, tmp_path) as (app, port):
        job_id = running_job(app, lines=3)
        jobs = app.state.jobs
        reads = []
        get = jobs.get
        jobs.get = lambda i: reads.append(i) or get(i)

        async def follow() -> list[dict]:
            """Twenty streams; the job changes three times while they listen."""

            async def one() -> list[dict]:
                _, reader, writer, _ = await request_head(port, f"/api/jobs/{job_id}/events")
                seen = []
                while True:
                    event, state = await read_event(reader)
                    seen.append(state)
                    if event == "end":
                        writer.close()
                        return seen

            clients = [asyncio.create_task(one()) for _ in range(20)]
            while app.state.runner.feed.total < 20:
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # quiet: the old streams re-read the job 4 times a second
            for line in (1, 2):
                await asyncio.to_thread(jobs.fail, job_id, line, "held")
                await asyncio.sleep(0.3)
            await asyncio.to_thread(jobs.set_state, job_id, "done")
            return await asyncio.gather(*clients)

        seen = asyncio.run(follow())
    for states in seen:
        assert [s["failed"] for s in states] == [0, 1, 2, 2, 2] and states[-1]["state"] == "done"
    assert len(reads) <= 6, f"{len(reads)} reads of the job for 20 streams and 3 changes"


def test_streams_are_capped_per_job_and_in_total(tiny, tmp_path):
    with live_app(tiny, tmp_path, max_streams=3, max_streams_per_job=2) as (app, port):
        first, second = running_job(app), running_job(app)

        async def scenario() -> list:
            held = [await request_head(port, f"/api/jobs/{first}/events") for _ in range(2)]
            over_job = await request_head(port, f"/api/jobs/{first}/events")
            held.append(await request_head(port, f"/api/jobs/{second}/events"))
            over_total = await request_head(port, f"/api/jobs/{second}/events")
            bodies = []
            for status, reader, writer, head in (over_job, over_total):
                assert b"retry-after: 5" in head.lower()
                body = await reader.read(4096)
                bodies.append((status, json.loads(body[body.index(b"{") :])))
                writer.close()
            for _, _, writer, _ in held:
                writer.close()
            await asyncio.sleep(0.5)
            again = await request_head(port, f"/api/jobs/{first}/events")
            again[2].close()
            return [h[0] for h in held], bodies, again[0]

        held, bodies, again = asyncio.run(scenario())
    assert held == [200, 200, 200]
    (job_status, job_body), (total_status, total_body) = bodies
    assert job_status == 429 and job_body["status"] == 429 and job_body["ok"] is False
    assert "VROLLOUT_MAX_STREAMS_PER_JOB" in job_body["error"]
    assert total_status == 503 and "VROLLOUT_MAX_STREAMS" in total_body["error"]
    assert again == 200  # the places are given back when streams end


def test_keep_alive_comments_and_idle_timeout(tiny, tmp_path):
    with live_app(tiny, tmp_path, stream_keepalive_s=0.2, stream_idle_timeout_s=1.0) as (app, port):
        job_id = running_job(app)

        async def listen() -> tuple[bytes, float]:
            status, reader, writer, _ = await request_head(port, f"/api/jobs/{job_id}/events")
            assert status == 200
            start = time.monotonic()
            body = b""
            while chunk := await asyncio.wait_for(reader.read(4096), 10):
                body += chunk
                if body.endswith(b"0\r\n\r\n"):  # the last chunk: the server ended the stream
                    break
            writer.close()
            return body, time.monotonic() - start

        body, seconds = asyncio.run(listen())
    assert b"event: progress" in body and body.count(b": ping") >= 2
    # The server ended the stream (its last chunk arrived), and not before a second without progress. How much
    # later is the machine's business: an upper bound on wall time would fail on a busy one, not on a bug.
    assert seconds > 0.8, seconds


def test_a_stream_of_an_unknown_job_is_a_404(tiny_client):
    r = tiny_client.get("/api/jobs/nope/events")
    assert r.status_code == 404 and r.json()["ok"] is False
    assert tiny_client.app.state.runner.feed.total == 0
