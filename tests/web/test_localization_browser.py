"""The job page of ProcessBench-shaped lines in Chromium: the error-localization table appears
(static/localization.js), and the localization page draws its figures; no script errors."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from support import REPO
from support.live import live_app

pytestmark = pytest.mark.browser


def test_job_page_shows_the_localization_table(browser, tiny, tmp_path):
    script = REPO / "examples" / "make_localization_data.py"
    lines = subprocess.run(
        [sys.executable, str(script), "--problems", "3", "--per-problem", "2"],
        check=True,
        capture_output=True,
    ).stdout
    with live_app(tiny, tmp_path) as (_, port):
        base = f"http://127.0.0.1:{port}"
        job = httpx.post(f"{base}/api/jobs", files={"file": ("lines.jsonl", lines)}).json()["job"]["id"]
        deadline = time.time() + 300
        while httpx.get(f"{base}/api/jobs/{job}").json()["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.2)
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/jobs/{job}")
        page.wait_for_selector("body[data-localization='6']", timeout=60_000)
        assert page.is_visible("#localization")
        cells = page.locator("#localization-table tbody tr").all_inner_texts()
        assert len(cells) == 6 and cells[0].startswith("max_reverse_kl") and "chance" in cells[-1]
        page.click("#localization a")
        page.wait_for_selector("#fig-f1 .main-svg", timeout=60_000)
        assert page.locator("#fig-max_reverse_kl .main-svg").count() > 0
        assert page.locator("#lines tbody tr").count() == 6
        page.close()
        assert problems == []
