"""The figure builder (pure, tested on its data) and the HTML pages, in process on the tiny model."""

from __future__ import annotations

import json
import re

import plotly.io as pio
import pytest

from app.figures import analysis_figure, cumulative_share

XSS = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'


@pytest.fixture
def analysis(tiny_client):
    body = {"prompt": "hello", "response": "the hello the world, hello there", "privileged": "hint"}
    return tiny_client.post("/api/analyze", json=body).json()


def test_figure_data(analysis):
    fig = analysis_figure(analysis)
    steps = analysis["steps"]
    names = [t.name for t in fig.data]
    assert names == [
        "reverse KL (nats)",
        "divergence (teacher top-1 ≠ token)",
        "cumulative share of total KL",
        "teacher log-prob of the token",
    ]
    assert all(t.type == "scattergl" for t in fig.data)  # WebGL: fast with thousands of points
    kl, div, share, logprob = fig.data
    assert list(kl.x) == list(range(len(steps))) and list(kl.y) == [s["reverse_kl"] for s in steps]
    assert list(div.x) == [s["position"] for s in steps if not s["agree"]]
    assert list(logprob.y) == [s["teacher_logprob"] for s in steps]
    assert share.y[-1] == pytest.approx(1.0) and list(share.y) == sorted(share.y)
    assert share.yaxis == "y2"


def test_figure_hover_text_is_escaped(analysis):
    analysis["steps"][0]["token"] = XSS
    hover = analysis_figure(analysis).data[0].hovertext[0]
    assert "<script>" not in hover and "&lt;script&gt;" in hover and "<img" not in hover


def test_cumulative_share():
    assert cumulative_share([1.0, 1.0, 2.0]) == [0.25, 0.5, 1.0]
    assert cumulative_share([0.0, 0.0]) == [0.0, 0.0]


def test_figure_endpoint_opens_with_plotly(tiny_client, analysis):
    r = tiny_client.get(f"/api/analyses/{analysis['id']}/figure")
    fig = pio.from_json(r.text)
    assert len(fig.data) == 4 and len(fig.data[0].x) == len(analysis["steps"])


def test_index_page(tiny_client):
    page = tiny_client.get("/").text
    assert 'id="analyze-form"' in page and "tiny-student" in page
    assert '<script src="/static/index.js">' in page


def test_analysis_page_renders_the_analysis(tiny_client, analysis):
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    assert f'<link rel="alternate" type="application/json" href="/api/analyses/{analysis["id"]}">' in page
    assert page.count('class="col') == len(analysis["steps"])
    assert f'data-key="tokens">{analysis["summary"]["tokens"]}<' in page
    assert re.search(r'<script src="/vendor/plotly-[\d.]+\.min\.js">', page)
    embedded = re.search(r'<script type="application/json" id="analysis-data">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == analysis
    assert tiny_client.get(re.search(r'src="(/vendor/plotly[^"]+)"', page).group(1)).status_code == 200


def test_untrusted_text_is_escaped_everywhere(tiny_client):
    body = {"prompt": XSS, "response": XSS, "privileged": XSS}
    a = tiny_client.post("/api/analyze", json=body).json()
    for url in (f"/analyses/{a['id']}", f"/analyses/{a['id']}/download", "/analyses"):
        page = tiny_client.get(url).text
        assert "<script>alert(1)" not in page and "<img src=x" not in page, url
        assert "&lt;img" in page or "\\u003cimg" in page, url


def test_download_is_self_contained(tiny_client, analysis):
    r = tiny_client.get(f"/analyses/{analysis['id']}/download")
    assert r.headers["content-disposition"].startswith("attachment;")
    page = r.text
    assert "<script src=" not in page and 'rel="stylesheet"' not in page
    assert "Plotly" in page and len(page) > 1_000_000  # plotly.js inlined


def test_analyses_page_and_html_errors(tiny_client, analysis):
    page = tiny_client.get("/analyses").text
    assert f'href="/analyses/{analysis["id"]}"' in page
    missing = tiny_client.get("/analyses/nope", headers={"accept": "text/html"})
    assert missing.status_code == 404 and "no stored analysis" in missing.text and "<html" in missing.text
    api_missing = tiny_client.get("/api/analyses/nope", headers={"accept": "text/html"})
    assert api_missing.json()["status"] == 404
