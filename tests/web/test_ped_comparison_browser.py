"""The comparison of a pedagogical job in Chromium: on the job page (the headline table as the
API gives it, the per-line table linking each line's OPD analysis, the figures drawn, model text
and ids shown as text), and in the one-file report.html that write_pedagogical makes, opened
offline. No script errors, no refused request."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from support.live import live_app
from vrollout.report.pedagogical import write_pedagogical

pytestmark = pytest.mark.browser

MARKUP = '<img src=x onerror="document.body.dataset.owned=1">'
LINES = [
    {"id": MARKUP, "prompt": "What is 2+2?", "privileged": "4", "reference_answer": "no such answer"},
    {"id": "plain", "prompt": "Say hi.", "reference_answer": "hi"},
    {"id": "bare", "prompt": "Name a colour."},
]


def watch(page) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    refused: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: refused.append(r.url) if r.status >= 400 else None)
    return problems, refused


def headline_texts(page) -> dict[str, list[str]]:
    """Each headline shown: its column (student alone, OPD, pedagogical, side by side; "all" for
    the line count above them), its label and its text."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("#comparison-headline [data-measure]")].map(
             (d) => [d.dataset.measure, [d.closest("[data-column]").dataset.column,
                     d.querySelector("dt").textContent, d.querySelector("dd").textContent]]).concat(
           [...document.querySelectorAll("#comparison-lines [data-measure]")].map(
             (s) => [s.dataset.measure, ["all", s.querySelector(".lbl").textContent,
                     s.querySelector("b").textContent]])))"""
    )


def test_job_page_and_report_show_the_comparison(browser, tiny, tmp_path):
    with live_app(tiny, tmp_path) as (app, port):
        base = f"http://127.0.0.1:{port}"
        lines = "\n".join(json.dumps(x) for x in LINES).encode()
        form = {"mode": "pedagogical", "threshold": "0.2", "sweep": "0.01,0.5", "max_new_tokens": "6"}
        r = httpx.post(f"{base}/api/jobs", files={"file": ("lines.jsonl", lines)}, data=form)
        assert r.status_code == 201, r.text
        job = r.json()["job"]["id"]
        deadline = time.time() + 300
        while httpx.get(f"{base}/api/jobs/{job}").json()["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.2)
        api = httpx.get(f"{base}/api/jobs/{job}/comparison").json()

        page = browser.new_page()
        problems, refused = watch(page)
        page.goto(f"{base}/jobs/{job}")
        page.wait_for_selector("body[data-comparison='3']", timeout=60_000)
        assert page.is_visible("#comparison")
        shown = headline_texts(page)
        assert shown == {h["key"]: [h["column"], h["label"], h["text"]] for h in api["headlines"]}
        rows = page.locator("#comparison-rows tbody tr")
        assert rows.count() == 3
        assert rows.nth(0).locator("td").nth(1).inner_text() == MARKUP  # an id is text, never markup
        links = page.locator("#comparison-rows tbody a").evaluate_all(
            "(links) => links.map((a) => a.pathname)"
        )
        assert links == [f"/analyses/{r['analysis_id']}" for r in api["rows"]]
        cells = [rows.nth(i).locator("td").nth(6).inner_text() for i in range(3)]
        assert cells == [str(r["interventions"]) for r in api["rows"]]
        page.wait_for_selector("#fig-comparison-interventions_vs_divergences .main-svg", timeout=60_000)
        for key in api["figures"]:
            assert page.locator(f"#fig-comparison-{key} .main-svg").count() > 0, key
        assert page.evaluate("document.body.dataset.owned") is None
        page.close()
        assert refused == [] and problems == []

        records = list(app.state.jobs.rollouts(job))
    write_pedagogical(records, tmp_path / "out", include="all", name=MARKUP)
    page = browser.new_page()
    problems, refused = watch(page)
    page.goto((tmp_path / "out" / "report.html").as_uri())
    page.wait_for_selector("#fig-interventions_vs_divergences .main-svg", timeout=60_000)
    assert page.locator("h1").inner_text().startswith(MARKUP)
    assert headline_texts(page) == shown
    assert page.locator("#comparison-rows tbody tr").count() == 3
    assert page.evaluate("document.body.dataset.owned") is None
    page.close()
    assert refused == [] and problems == []
