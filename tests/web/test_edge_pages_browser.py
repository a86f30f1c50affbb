"""The pages of #25/#28 on edge data, in headless Chromium: an analysis with no divergence (short
and long), one token long, a conversation without thinking; the manual opened at an anchor that
is not valid percent-encoding. Every control is used; no page may throw."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from support.live import live_app
from support.synthetic import conversation_analysis, synthetic_analysis
from vrollout.ids import new_id
from vrollout.pipeline.assembly import summarize


def agreeing(a: dict) -> dict:
    """`a` with the teacher agreeing everywhere: no divergence, no fork."""
    a = copy.deepcopy(a)
    a["id"] = new_id()
    for s in a["steps"]:
        s.update(agree=True, teacher_rank=1, teacher_top1=s["token"])
    a["summary"] = summarize(a["steps"])
    return a


def one_token() -> dict:
    a = synthetic_analysis(1, top_k=3, seed=4)
    a["summary"] = summarize(a["steps"])
    return a


@pytest.fixture(scope="module")
def site(tiny, tmp_path_factory):
    analyses = {
        "short_agreeing": agreeing(synthetic_analysis(60, top_k=3, seed=1)),
        "long_agreeing": agreeing(synthetic_analysis(2500, top_k=2, seed=2)),
        "one_token": one_token(),
        "no_thinking": conversation_analysis(120, seed=9, thinking=False),
    }
    with live_app(tiny, tmp_path_factory.mktemp("edges")) as (app, port):
        for a in analyses.values():
            app.state.store.save(a)
        base = f"http://127.0.0.1:{port}"
        # a job none of whose lines is done: queued behind a long one, and cancelled there
        many = "".join(
            json.dumps({"prompt": f"question {i}", "response": "an answer"}) + "\n" for i in range(300)
        )
        first = httpx.post(f"{base}/api/jobs", files={"file": ("many.jsonl", many)}).json()["job"]["id"]
        lines = json.dumps({"prompt": "a prompt", "response": "a response"}) + "\n"
        waiting = httpx.post(f"{base}/api/jobs", files={"file": ("one.jsonl", lines)}).json()["job"]["id"]
        for job in (waiting, first):
            httpx.post(f"{base}/api/jobs/{job}/cancel")
        assert httpx.get(f"{base}/api/jobs/{waiting}").json()["done"] == 0
        yield {"url": base, "idle_job": waiting, **analyses}


def opened(browser, url: str, ready: str | None = "body[data-ready='1']"):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    if ready:
        page.wait_for_selector(ready, timeout=30_000)
    return page


def use_every_control(page) -> None:
    """Each jump, key and form of the analysis page, whether or not it has somewhere to go."""
    for button in ("#prev-div", "#next-div", "#next-matters", "#top-kl"):
        if page.is_enabled(button):
            page.click(button)
    for chip in page.locator("#chips .chip").all():
        chip.click()
    page.focus("#strip .col[tabindex='0']")
    last = int(page.evaluate("JSON.parse(document.getElementById('view-data').textContent).total")) - 1
    for key, at in (("Home", 0), ("ArrowRight", min(1, last)), ("ArrowLeft", 0), ("End", last), ("Home", 0)):
        page.keyboard.press(key)  # each move lands (its block fetched) before the next key
        page.wait_for_function("(at) => document.body.dataset.selected === String(at)", arg=at)
    for key in ("n", "p", "Enter"):
        page.keyboard.press(key)
    page.fill("#search", "no such text in it")
    page.press("#search", "Enter")
    page.wait_for_function("() => document.getElementById('jump-status').textContent.includes('not in')")
    if page.locator("#show-diff").count():
        page.click("#show-diff")
    if page.locator("#turn-select").count():
        page.select_option("#turn-select", index=1)
    for metric in page.locator('input[name="metric"]').all():
        metric.check()
    for scale in page.locator('input[name="scale"]').all():
        scale.check()
    page.locator("#strip .col").first.hover()
    page.wait_for_timeout(200)  # let the linked hover and any fetch settle before the check


@pytest.mark.parametrize("name", ["short_agreeing", "long_agreeing", "one_token", "no_thinking"])
def test_an_edge_analysis_page_throws_nothing(site, browser, name):
    page = opened(browser, f"{site['url']}/analyses/{site[name]['id']}")
    use_every_control(page)
    assert page.errors == []


def test_the_manual_at_an_anchor_that_is_not_percent_encoding_throws_nothing(site, browser):
    page = opened(browser, f"{site['url']}/docs/metrics.md#%E0%A4%A", ready="article.manual-page")
    page.wait_for_timeout(200)
    assert page.errors == []


def test_a_job_with_no_line_done_throws_nothing(site, browser):
    page = opened(browser, f"{site['url']}/jobs/{site['idle_job']}", ready="body[data-loaded='0']")
    assert "0 of 1 lines done" in page.text_content("#trajectories-pending")
    page.fill("#filter", "x")
    page.wait_for_timeout(200)
    assert page.errors == []


def test_the_latest_key_wins_over_a_block_still_on_its_way(site, browser):
    """End, then Home at once: End's block arrives after Home has moved; Home stays."""
    a = site["long_agreeing"]
    page = opened(browser, f"{site['url']}/analyses/{a['id']}")
    page.focus("#strip .col[tabindex='0']")
    page.keyboard.press("End")
    page.keyboard.press("Home")
    page.wait_for_selector("#strip .block:last-child[data-filled='1']", state="attached")
    page.wait_for_function("() => document.body.dataset.selected !== undefined")
    assert page.get_attribute("body", "data-selected") == "0"
    assert page.evaluate("() => document.activeElement.dataset.i") == "0"
    assert page.errors == []
