"""The job page of ProcessBench-shaped lines in Chromium: the error-localization table appears
(static/localization.js), and the localization page draws its figures, a heat map per scorer
with the best scorer marked and each line linked to its analysis, where the line's steps and
its labelled first wrong step are drawn on the strip; no script errors. Screenshots at 1400
and 800 px go to $VROLLOUT_SHOTS when it is set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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
        body = httpx.get(f"{base}/api/jobs/{job}/localization").json()
        check_localization_page(page, body)
        for width in (1400, 800):
            page.set_viewport_size({"width": width, "height": 900})
            page.wait_for_timeout(300)  # plotly's responsive resize
            f1_labels_fit(page)
            shot(page, f"localization-{width}")
            shot(page, f"localization-{width}-f1", "#fig-f1")
            shot(page, f"localization-{width}-heat", "#heat-maps")
        # A line's analysis: its steps, the labelled one marked, and boundaries on the strip
        labelled = next(p for p in body["predictions"] if p["label"] > 0)
        page.set_viewport_size({"width": 1400, "height": 900})
        page.click(f'#lines a[href="/analyses/{labelled["analysis_id"]}"]')
        page.wait_for_selector("body[data-steps-overlay]", timeout=30_000)
        steps = page.locator("#steps-overlay .steps-list li")
        assert steps.count() == len(labelled["scores"]["max_reverse_kl"])  # one score per step
        assert page.locator("#steps-overlay li.wrong").get_attribute("value") == str(labelled["label"])
        page.wait_for_selector("#strip .col.step-start", timeout=30_000)
        start = int(page.locator("#steps-overlay li.wrong").get_attribute("data-start"))
        assert page.locator(f'#strip .col[data-i="{start}"]').get_attribute("class").count("step-wrong") == 1
        shot(page, "localization-analysis-1400-steps", "#steps-overlay")
        page.locator(f'#strip .col[data-i="{start}"]').scroll_into_view_if_needed()
        shot(page, "localization-analysis-1400-strip", "#strip")
        page.close()
        assert problems == [], problems


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


def check_localization_page(page, body) -> None:
    """Lines link to their analyses, a heat map per scorer (labels outlined), the best scorer marked."""
    links = page.locator("#lines tbody td:first-child a").evaluate_all("(a) => a.map((x) => x.pathname)")
    assert links == [f"/analyses/{p['analysis_id']}" for p in body["predictions"]]
    assert page.locator("#heat-maps table.heat").count() == len(body["scorers"])
    for name in body["scorers"]:
        rows = page.locator(f"#heat-{name} tbody tr")
        assert rows.count() == len(body["predictions"])
        assert page.locator(f"#heat-{name} td.lab").count() == sum(
            p["label"] >= 0 for p in body["predictions"]
        )
    f1 = {n: body["metrics"][n]["f1"] for n in body["scorers"]}
    if max(f1.values()) > 0:
        best = page.locator("#localization-table tr.best code").inner_text()
        assert page.locator("#best-scorer code").inner_text() == best and f1[best] == max(f1.values())
    else:  # no scorer found a wrong step (the tiny model): none is marked
        assert page.locator("#localization-table tr.best").count() == 0
    page.locator("#lines details summary").first.click()
    assert page.locator("#lines details[open] li").count() >= 1


def f1_labels_fit(page) -> None:
    """Every tick label of the F1 chart lies inside the chart: none is cut."""
    box = page.locator("#fig-f1 .main-svg").first.bounding_box()
    for label in page.locator("#fig-f1 .ytick text").all():
        b = label.bounding_box()
        assert b["x"] >= box["x"] - 0.5 and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5
