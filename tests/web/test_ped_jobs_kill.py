"""A pedagogical job on a real server process that is killed mid-job: after a restart it resumes
with exactly the lines not done, so every line has one analysis and one rollout record."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import zlib

import httpx
from support import REPO, free_port

SERVER = """
import sys
sys.path.insert(0, "tests")
import uvicorn
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app
from pathlib import Path

settings = tiny_settings(Path(sys.argv[1]))
analyzer = Analyzer(tiny_pair(), settings)
if sys.argv[3] == "hold":  # the second group of rollouts never ends: the kill lands after the first
    import threading

    first, groups = analyzer.pedagogical_batch, []

    def held(*args, **kwargs):
        groups.append(1)
        if len(groups) > 1:
            threading.Event().wait()
        return first(*args, **kwargs)

    analyzer.pedagogical_batch = held
app = create_app(settings, analyzer=analyzer)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def start(tmp_path, port: int, hold: bool = False) -> subprocess.Popen:
    # Rollouts decode two lines at a time: the kill lands between stored groups. With `hold`, the
    # second group never ends (a job of 6 short lines could otherwise finish before the kill).
    env = {**os.environ, "VROLLOUT_ALLOWED_HOSTS": "127.0.0.1", "VROLLOUT_PEDAGOGICAL_BATCH": "2"}
    cmd = [sys.executable, "-c", SERVER, str(tmp_path), str(port), "hold" if hold else "run"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()["ok"]:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("the server did not start")


def test_killed_mid_job_resumes_every_line_exactly_once(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    lines = [{"id": f"q{i}", "prompt": f"What is {i}+{i}?", "reference_answer": str(2 * i)} for i in range(6)]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    proc = start(tmp_path, port, hold=True)
    try:
        r = httpx.post(
            f"{url}/api/jobs",
            files={"file": ("q.jsonl", data)},
            data={"mode": "pedagogical", "max_new_tokens": "3", "sweep": "0.5"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["job"]["id"]
        deadline = time.time() + 120
        while httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()["done"] < 2:
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()  # as a crash would: no shutdown, no cleanup
        proc.wait(timeout=30)
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        before = db.execute("SELECT COUNT(*) FROM job_rollouts").fetchone()[0]
    assert before == 2  # the first group's two lines, stored; the second's held, then killed
    proc = start(tmp_path, port)
    try:
        deadline = time.time() + 300
        while (job := httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json())["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.1)
        items = httpx.get(f"{url}/api/jobs/{job_id}/items", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (job["done"], job["failed"], job["mode"]) == (6, 0, "pedagogical")
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        records = [json.loads(r) for (r,) in db.execute("SELECT record FROM job_rollouts ORDER BY line")]
        stored = [json.loads(zlib.decompress(blob)) for (blob,) in db.execute("SELECT data FROM analyses")]
    assert [r["line"] for r in records] == list(range(1, 7))  # nothing lost, nothing twice
    assert [r["id"] for r in records] == [f"q{i}" for i in range(6)]
    assert sorted(a["job"]["line"] for a in stored) == list(range(1, 7))
    assert [r["student"]["analysis_id"] for r in records] == [i["analysis_id"] for i in items]
