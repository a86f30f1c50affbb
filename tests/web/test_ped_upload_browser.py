"""The upload page in Chromium: choosing the pedagogical mode shows its options, and the upload
becomes a pedagogical job with them (the job page follows it to the end); a bad option is shown
as the API's error; the analysis mode sends none of them."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from support.live import live_app

pytestmark = pytest.mark.browser

LINES = [
    {"id": "sum", "prompt": "What is 2+2?", "privileged": "2+2 = 4", "reference_answer": "4"},
    {"id": "given", "prompt": "hi", "response": "hello the world", "reference_answer": "world"},
]


def test_upload_page_starts_a_pedagogical_job(browser, tiny, tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in LINES) + "\n")
    with live_app(tiny, tmp_path) as (app, port):
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{base}/upload")
        assert not page.is_visible("#pedagogical-options")
        page.select_option("#mode", "pedagogical")
        assert page.is_visible("#pedagogical-options")
        page.set_input_files("#file", str(src))
        page.fill("#threshold", "1")  # the form allows it; the API refuses it (less than 1), shown here
        page.click("#upload")
        page.wait_for_selector("#threshold-error")  # shown once, next to its field (#28)
        assert "1" in page.text_content("#threshold-error")  # "... less than 1"
        assert page.get_attribute("#threshold", "aria-invalid") == "true"
        page.fill("#threshold", "0.2")
        page.fill("#sweep", "0.01, 0.5")
        page.fill("#max_new_tokens", "4")
        page.fill("#seed", "7")
        page.click("#upload")
        page.wait_for_url("**/jobs/*", timeout=60_000, wait_until="commit")
        job_id = page.url.rsplit("/", 1)[-1]
        page.wait_for_selector("body[data-job-state='done']", timeout=300_000)
        job = httpx.get(f"{base}/api/jobs/{job_id}").json()
        assert (job["mode"], job["done"], job["failed"]) == ("pedagogical", 2, 0)
        assert job["options"]["threshold"] == 0.2 and job["options"]["sweep"] == [0.01, 0.5]
        assert job["options"]["generation"] == {
            "max_new_tokens": 4,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 7,
        }
        assert [r["id"] for r in app.state.jobs.rollouts(job_id)] == ["sum", "given"]
        # The analysis mode sends none of the pedagogical fields, even when they were filled in.
        page.goto(f"{base}/upload")
        page.select_option("#mode", "pedagogical")
        page.fill("#threshold", "1.5")
        page.select_option("#mode", "analysis")
        assert not page.is_visible("#pedagogical-options")
        page.set_input_files("#file", str(src))
        page.click("#upload")
        page.wait_for_url("**/jobs/*", timeout=60_000, wait_until="commit")
        job = httpx.get(f"{base}/api/jobs/{page.url.rsplit('/', 1)[-1]}").json()
        assert job["mode"] == "analysis" and "threshold" not in job["options"]
        deadline = time.time() + 120
        while httpx.get(f"{base}/api/jobs/{job['id']}").json()["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.2)
        page.close()
        assert problems == []
