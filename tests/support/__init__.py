"""Helpers shared by the tests (never imported from one test module into another)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from vrollout.config import Settings

REAL_CACHE = Path.home() / ".cache" / "vrollout"  # shared with `make run`: converted once
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_settings(tmp_path: Path, **overrides: object) -> Settings:
    overrides = {"max_response_tokens": 1000, **overrides}
    return Settings(database=tmp_path / "db.sqlite3", chunk_size=8, **overrides)


def assert_error(resp, status, *words):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["ok"] is False and body["status"] == status
    for word in words:
        assert word in body["error"], body["error"]


GOOD = {"prompt": "hi", "response": "hello the world"}


def upload(client, text: str | bytes, name: str = "runs.jsonl", **form):
    data = text.encode() if isinstance(text, str) else text
    return client.post("/api/jobs", files={"file": (name, data)}, data={k: str(v) for k, v in form.items()})


def wait_done(client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "cancelled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job)


def job_events(client, job_id: str) -> list[tuple[str | None, dict]]:
    """Every (event, data) of a job's progress stream, read until the server ends it."""
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    return events


def contexts(pair):
    tok = pair.student.tokenizer
    s = tok.apply_chat_template(
        [{"role": "user", "content": "What is 17*23?"}], tokenize=False, add_generation_prompt=True
    )
    t = tok.apply_chat_template(
        [{"role": "user", "content": "What is 17*23?\n\nReference: 391"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tok(s, add_special_tokens=False)["input_ids"], tok(t, add_special_tokens=False)["input_ids"]


def response(pair, n):
    text = "17*23 = 381. Let me check: 17*20 = 340 and 17*3 = 51, so the total is 391. " * 4
    ids = pair.student.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= n
    return ids[:n]
