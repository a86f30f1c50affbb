"""The figure builder (pure, tested on its data) and the HTML pages, in process on the tiny model."""

from __future__ import annotations

import json
import re

import plotly.io as pio
import pytest
from support import GOOD, upload, wait_done
from vrollout.report.figures import analysis_figure, cumulative_share, figure_dict

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
        "even spread",  # the Lorenz panel (tests/web/test_analysis_signal.py)
        "Lorenz: reverse KL",
        "Lorenz: |advantage|",
    ]
    assert all(t.type == "scatter" for t in fig.data)  # in the basic plotly.js bundle the page loads
    kl, div, share, logprob = fig.data[:4]
    assert list(kl.x) == list(range(len(steps))) and list(kl.y) == [s["reverse_kl"] for s in steps]
    assert list(div.x) == [s["position"] for s in steps if not s["agree"]]
    assert list(logprob.y) == [s["teacher_logprob"] for s in steps]
    assert share.y[-1] == pytest.approx(1.0) and list(share.y) == sorted(share.y)
    assert (kl.yaxis, share.yaxis, logprob.yaxis) == ("y", "y2", "y3")
    assert kl.mode == "lines+markers"  # few tokens: markers too


def test_long_analyses_draw_lines_only(analysis):
    analysis["steps"] = analysis["steps"] * 100
    for i, step in enumerate(analysis["steps"]):
        step["position"] = i
    data = figure_dict(analysis)["data"]
    assert data[0]["mode"] == "lines" and len(data[0]["x"]) == len(analysis["steps"])


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
    assert len(fig.data) == 7 and len(fig.data[0].x) == len(analysis["steps"])  # 3: the Lorenz panel


def test_index_page(tiny_client):
    page = tiny_client.get("/").text
    assert 'id="analyze-form"' in page and "tiny-student" in page
    assert '<script src="/static/index.js">' in page


def page_scripts(html: str) -> list[str]:
    return [s for s in re.findall(r'<script src="/static/([^"]+)"', html) if not s.startswith("vendor/")]


def test_pages_load_common_js_before_their_scripts(tiny_client, analysis):
    """static/common.js holds the helpers the page scripts share: every page loads it first."""
    job = upload(tiny_client, json.dumps(GOOD)).json()["job"]
    paths = ["/", "/upload", "/jobs", f"/jobs/{job['id']}", f"/analyses/{analysis['id']}", "/docs"]
    loaded = {path: page_scripts(tiny_client.get(path).text) for path in paths}
    for path, scripts in loaded.items():
        assert scripts[0] == "common.js" and scripts.count("common.js") == 1, (path, scripts)
    assert loaded[f"/analyses/{analysis['id']}"] == ["common.js", "analysis.js", "pedagogical.js"]
    assert page_scripts(tiny_client.get("/login").text) == []  # public: it runs no script
    static = tiny_client.app.state.settings.static_dir
    for script in static.glob("*.js"):
        if script.name != "common.js":
            text = script.read_text()
            # The helpers are common.js's: no script keeps its own copy (tables.js and manual.js
            # need none of them; the others take theirs from VR).
            copies = ("const $ =", "getElementById", "function el(", "const fmt =", "displaylogo")
            assert not any(copy in text for copy in copies), script.name
    wait_done(tiny_client, job["id"])


def test_analysis_page_renders_the_analysis(tiny_client, analysis):
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    assert f'<link rel="alternate" type="application/json" href="/api/analyses/{analysis["id"]}">' in page
    # The strip is one block per 200 steps, filled by the script; the page embeds the analysis
    # without its steps, and the first block of them (the rest come from /api/.../steps).
    assert page.count('class="block"') == -(-len(analysis["steps"]) // 200)
    assert f'data-key="tokens">{analysis["summary"]["tokens"]}<' in page
    assert '<script src="/static/vendor/plotly-basic-4.1.1.min.js">' in page
    embedded = re.search(r'<script type="application/json" id="analysis-data">(.*?)</script>', page, re.S)
    left_out = ("steps", "response_ids", "response_mask", "virtual_rollout")  # the JSON API has them
    assert json.loads(embedded.group(1)) == {k: v for k, v in analysis.items() if k not in left_out}
    view = re.search(r'<script type="application/json" id="view-data">(.*?)</script>', page, re.S)
    assert json.loads(view.group(1))["first"] == analysis["steps"][:200]
    assert tiny_client.get("/static/vendor/plotly-basic-4.1.1.min.js").status_code == 200


def test_vendored_plotly_matches_the_python_package():
    from plotly.offline import get_plotlyjs_version
    from vrollout.report.pages import PLOTLY_BUNDLE

    vendored = re.search(r"plotly-basic-(\d+)\.", PLOTLY_BUNDLE).group(1)
    assert vendored == get_plotlyjs_version().split(".")[0], "re-vendor plotly.js basic (npm)"


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
    assert "Plotly" in page and len(page) > 1_000_000  # plotly.js basic (1.2 MB) inlined


def test_analyses_page_and_html_errors(tiny_client, analysis):
    page = tiny_client.get("/analyses").text
    assert f'href="/analyses/{analysis["id"]}"' in page
    missing = tiny_client.get("/analyses/nope", headers={"accept": "text/html"})
    assert missing.status_code == 404 and "no stored analysis" in missing.text and "<html" in missing.text
    api_missing = tiny_client.get("/api/analyses/nope", headers={"accept": "text/html"})
    assert api_missing.json()["status"] == 404
