"""The upload page's teacher context in Chromium: choosing "sibling" makes a sibling job, the job
table's Teacher context column says so, and the analysis page names the sibling's line."""

from __future__ import annotations

import json

import pytest
from support.live import live_app

pytestmark = pytest.mark.browser

Q = "What is 6*7?"
LINES = [
    {"id": "a", "prompt": Q, "response": "6*7 = 41.", "reference_answer": "42"},
    {"id": "b", "prompt": Q, "response": "6*7 = 42.", "reference_answer": "42"},
    {"id": "d", "prompt": Q, "response": "It is 42.", "correct": True},
    {"id": "c", "prompt": "What is 2+2?", "response": "5", "reference_answer": "4"},
]


def test_a_sibling_job_from_the_upload_page(browser, tiny, tmp_path):
    src = tmp_path / "runs.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in LINES))
    with live_app(tiny, tmp_path) as (_, port):
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/upload")
        page.set_input_files("#file", str(src))
        page.select_option("#teacher_context", "sibling")
        page.click("#upload")
        page.wait_for_selector("#rejected:not([hidden])")
        assert page.text_content("#rejected-rows").startswith(
            "4teacher_context sibling: no successful sibling"
        )
        page.click("#job-link")
        page.wait_for_selector("body[data-job-state='done']", timeout=120_000)
        page.wait_for_selector("body[data-loaded='3']", timeout=30_000)
        kinds = page.locator("#trajectories tbody tr td:nth-child(12)").all_text_contents()
        assert kinds == ["sibling", "sibling", "sibling"]
        page.locator("#trajectories tbody tr a").first.click()
        page.wait_for_selector("#teacher-context-kind")
        text = page.text_content("#teacher-context-kind")
        assert "Teacher context: sibling" in text and "from line 2 (id b)" in text
        page.close()
        assert problems == []
