"""Preflight on the pages and the API: at the top of the analysis page (escaped), the job's
aggregate (`GET /api/jobs/{id}/preflight`, the job page), and in a browser (tiny model)."""

from __future__ import annotations

import json

import pytest
from support import upload, wait_done

XSS = "<script>alert(1)</script>"
FLAGGED = {
    "prompt": "What is 2+2?",
    "response": "It is 4, the hello world",
    "privileged": "The answer is 4.",
    # a per-line teacher template that writes text before the prompt: outside the privileged block
    "teacher_template": XSS + "{prompt}\n\n{privileged}",
}


@pytest.fixture
def flagged(tiny_client):
    resp = tiny_client.post("/api/analyze", json=FLAGGED)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_api_carries_the_preflight(flagged):
    pf = flagged["preflight"]
    assert set(pf) >= {"context_diff", "noise_floor", "leak"}
    diff = pf["context_diff"]
    assert diff["ok"] is False and diff["flags_total"] == 1
    assert XSS in diff["flags"][0]["teacher_text"] and diff["flags"][0]["kind"] == "other"
    assert pf["noise_floor"]["computed"] and pf["noise_floor"]["reverse_kl_mean"] == 0.0
    assert flagged["summary"]["preflight_ok"] is False


def test_the_page_shows_it_first_and_escaped(tiny_client, flagged):
    html = tiny_client.get(f"/analyses/{flagged['id']}").text
    # The first screen (#28): the headline, then the preflight's line of chips, before the tiles.
    assert html.index('id="headline"') < html.index('id="preflight"') < html.index('id="summary"')
    assert 'data-key="flags_total">1</span> difference outside the privileged block' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and XSS not in html
    assert 'data-key="noise_floor">0.000</span> nats/token vs signal' in html
    assert 'data-key="leak_share">' in html
    download = tiny_client.get(f"/analyses/{flagged['id']}/download").text
    assert 'id="preflight"' in download


def test_noise_floor_off_says_so(tiny_client):
    resp = tiny_client.post("/api/analyze", json={**FLAGGED, "noise_floor": False})
    html = tiny_client.get(f"/analyses/{resp.json()['id']}").text
    assert "Noise floor not computed" in html and "noise_floor false" in html
    assert tiny_client.post("/api/analyze", json={**FLAGGED, "noise_floor": "no"}).status_code == 422


def test_job_aggregate(tiny_client):
    lines = [
        FLAGGED,
        {**FLAGGED, "teacher_template": None, "response": "the answer is 4 ."},
        {"prompt": "hi", "response": "hello the world"},
    ]
    job_id = upload(tiny_client, "\n".join(json.dumps(x) for x in lines)).json()["job"]["id"]
    assert wait_done(tiny_client, job_id)["done"] == 3
    agg = tiny_client.get(f"/api/jobs/{job_id}/preflight").json()
    assert agg["lines"] == agg["lines_checked"] == 3
    assert agg["lines_flagged"] == 1 and agg["flag_kinds"] == {"other": 1}
    assert agg["noise_floor_kl_mean"]["max"] == 0.0 and agg["noise_floor_kl_mean"]["lines"] == 3
    assert agg["leak_share"]["lines"] == 2  # the line without privileged text has no leak score
    analyses = [
        tiny_client.get(f"/api/analyses/{i['analysis_id']}").json()
        for i in tiny_client.get(f"/api/jobs/{job_id}/items").json()
    ]
    assert agg["signal_kl_mean"]["max"] == pytest.approx(
        max(a["summary"]["reverse_kl_mean"] for a in analyses)
    )
    assert 'id="preflight"' in tiny_client.get(f"/jobs/{job_id}").text
    assert tiny_client.get("/api/jobs/nope/preflight").status_code == 404


@pytest.mark.browser
def test_preflight_in_a_browser(tiny_client, flagged, browser, tmp_path):
    """The one-file download opened from disk: the preflight card is the first card, its flag
    table shows the template's text as text (no script ran)."""
    path = tmp_path / "analysis.html"
    path.write_bytes(tiny_client.get(f"/analyses/{flagged['id']}/download").content)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.is_visible("#preflight") and page.is_visible("#preflight-flags")
    # In the first screen (#28), opened by itself: a context differs outside the privileged block.
    assert page.evaluate("document.querySelector('#first-screen #preflight').open")
    assert XSS in page.text_content("#preflight-flags")
    assert "nats/token vs signal" in page.text_content("#preflight-noise")
    assert dialogs == [] and errors == []
    page.close()
