"""A pedagogical job in Chromium (#28): the comparison's three columns side by side, a line's
two texts with the substituted tokens highlighted and each verdict's parsed answer (an answer
that only restates the question marked so), and the linked analysis opening with the job's
rollout of that line. Screenshots at 1400 and 800 px go to $VROLLOUT_SHOTS when it is set."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from support.live import live_app

pytestmark = pytest.mark.browser

RAMBLING = "91-58 is a type of mathematical constant that is often used in mathematics."
LINES = [
    {"id": "rambling", "prompt": "What is 91-58?", "response": RAMBLING, "reference_answer": "33"},
    {"id": "generated", "prompt": "Say hi.", "privileged": "hi", "reference_answer": "hi"},
    {"id": "sum", "prompt": "What is 2+2?", "privileged": "4", "reference_answer": "4"},
]


def shot(page, name: str, selector: str | None = None) -> None:
    """The page (or one part of it) as a PNG in $VROLLOUT_SHOTS, to be looked at."""
    folder = os.environ.get("VROLLOUT_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = str(Path(folder) / f"{name}.png")
        if selector:
            page.locator(selector).screenshot(path=path)
        else:
            page.screenshot(path=path, full_page=True)


def watch(page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return problems


def test_side_by_side_texts_and_the_jobs_rollout_on_the_analysis(browser, tiny, tmp_path):
    with live_app(tiny, tmp_path) as (_, port):
        base = f"http://127.0.0.1:{port}"
        lines = "\n".join(json.dumps(x) for x in LINES).encode()
        form = {"mode": "pedagogical", "threshold": "0.3", "max_new_tokens": "8"}
        r = httpx.post(f"{base}/api/jobs", files={"file": ("lines.jsonl", lines)}, data=form)
        assert r.status_code == 201, r.text
        job = r.json()["job"]["id"]
        deadline = time.time() + 300
        while httpx.get(f"{base}/api/jobs/{job}").json()["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.2)
        records = [httpx.get(f"{base}/api/jobs/{job}/rollouts/{n}").json()["record"] for n in (1, 2, 3)]
        substituted = [len(rec["pedagogical"]["interventions"]) for rec in records]
        assert any(substituted), "no line had a substitution: raise the threshold"

        for width in (1400, 800):
            page = browser.new_page(viewport={"width": width, "height": 900})
            problems = watch(page)
            page.goto(f"{base}/jobs/{job}")
            page.wait_for_selector("body[data-comparison='3']", timeout=60_000)
            columns = page.locator("#comparison-headline [data-column]")
            assert [columns.nth(i).get_attribute("data-column") for i in range(3)] == [
                "student", "opd", "pedagogical",
            ]  # fmt: skip
            boxes = [columns.nth(i).bounding_box() for i in range(3)]
            assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"]  # side by side, at both widths
            assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
            assert (
                columns.nth(0)
                .locator("[data-measure=student_success] dd")
                .inner_text()
                .endswith("with a verdict)")
            )
            # The rambling line's texts: its verdict shows what was parsed, and why it is wrong
            first = page.locator("#comparison-rows tbody tr[data-line='1']")
            first.locator("button[data-texts]").click()
            texts = page.locator("tr.ped-texts-row[data-line='1']")
            texts.locator(".ped-texts").wait_for(timeout=30_000)
            student = texts.locator(".ped-texts section").nth(0)
            assert student.locator("pre").inner_text() == RAMBLING
            assert student.locator("[data-key=parsed_answer]").inner_text() == "91-58"
            assert "last expression" in student.locator("[data-key=extractor]").inner_text()
            assert student.locator("[data-key=restated]").inner_text() == "which only restates the question"
            assert first.locator("button[data-texts]").get_attribute("aria-expanded") == "true"
            # Every line: exactly its substituted tokens marked, each titled with the proposal
            for n, rec in enumerate(records, start=1):
                if n != 1:
                    page.locator(f"#comparison-rows tbody tr[data-line='{n}'] button[data-texts]").click()
                row = page.locator(f"tr.ped-texts-row[data-line='{n}']")
                row.locator(".ped-texts").wait_for(timeout=30_000)
                marks = row.locator("mark.ped-sub[title]")
                assert marks.count() == len(rec["pedagogical"]["interventions"])
                for k, i in enumerate(rec["pedagogical"]["interventions"]):
                    assert marks.nth(k).text_content() == i["substitute"]
                    assert marks.nth(k).get_attribute("title") == f"the student proposed “{i['proposal']}”"
            shot(page, f"ped-job-{width}")
            shot(page, f"ped-job-{width}-comparison", "#comparison")
            page.close()
            assert problems == [], problems

        # The OPD analysis of a line with substitutions opens with the job's rollout of it
        n = next(n for n, count in enumerate(substituted, start=1) if count)
        analysis = records[n - 1]["student"]["analysis_id"]
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems = watch(page)
        page.goto(f"{base}/analyses/{analysis}")
        page.wait_for_selector(f"body[data-job-rollout='{n}']", timeout=30_000)
        assert page.is_visible("#ped-result")
        assert page.locator("#ped-strip .col.div").count() == substituted[n - 1]
        assert (
            page.locator("#ped-summary .ped-job-note")
            .inner_text()
            .startswith(f"The job's pedagogical rollout of line {n}")
        )
        page.locator("#pedagogical").scroll_into_view_if_needed()
        shot(page, "ped-analysis-1400", "#pedagogical")
        page.close()
        assert problems == [], problems
