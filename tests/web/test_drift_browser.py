"""The job page of a multi-step job in Chromium: the drift card's table shows one row per step in
step order and the drift figures are drawn; the trajectories table shows how each verdict was
reached; no script errors."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from support import GOOD
from support.live import live_app

pytestmark = pytest.mark.browser

LINES = [
    {**GOOD, "step": 20, "response": "the world", "reference_answer": "world"},
    {**GOOD, "step": 3, "response": "hello", "correct": True, "score": 0.5},
    {**GOOD, "step": 20, "response": r"\boxed{4}", "reference_answer": "4"},
]


def test_job_page_shows_the_drift(browser, tiny, tmp_path):
    with live_app(tiny, tmp_path) as (_, port):
        base = f"http://127.0.0.1:{port}"
        lines = "\n".join(json.dumps(x) for x in LINES).encode()
        job = httpx.post(f"{base}/api/jobs", files={"file": ("lines.jsonl", lines)}).json()["job"]["id"]
        deadline = time.time() + 300
        while httpx.get(f"{base}/api/jobs/{job}").json()["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.2)
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        refused: list[str] = []  # a job without steps-and-label lines never asks for localization
        page.on("response", lambda r: refused.append(r.url) if r.status >= 400 else None)
        page.goto(f"{base}/jobs/{job}")
        page.wait_for_selector("body[data-loaded='3']", timeout=60_000)
        assert page.is_visible("#drift")
        rows = page.locator("#drift-table tbody tr").all_inner_texts()
        assert [r.split("\t")[0] for r in rows] == ["3", "20"]
        assert rows[0].split("\t")[7] == "100.0% (n=1)" and rows[1].split("\t")[7] == "100.0% (n=2)"
        page.wait_for_selector("#fig-drift_agreement .main-svg", timeout=60_000)
        assert page.locator("#fig-drift_length .main-svg").count() > 0
        methods = page.locator("#trajectories tbody tr td:nth-child(10)").all_text_contents()
        assert methods == ["text", "given", "math-verify"]
        page.close()
        assert refused == []
        assert [p for p in problems if "422" not in p] == []
