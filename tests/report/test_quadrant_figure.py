"""TIP's quadrant scatter (#26, docs/objectives.md): a pure figure function, on the analysis page."""

from __future__ import annotations

import csv
import io
import json

import plotly.io as pio
import pytest
from vrollout.metrics.objectives import QUADRANTS, quadrants
from vrollout.report.figures import quadrant_figure

XSS = "<img src=x onerror=alert(1)>"


def analysis(entropies, kls, entropy_threshold=None, divergence_threshold=None):
    steps = [
        {"position": i, "token": XSS if i == 0 else f"t{i}", "student_entropy": e, "reverse_kl": kl}
        for i, (e, kl) in enumerate(zip(entropies, kls, strict=True))
    ]
    return {
        "steps": steps,
        "summary": {"quadrants": quadrants(entropies, kls, entropy_threshold, divergence_threshold)},
    }


def test_each_step_is_in_its_quadrants_trace():
    a = analysis([0.1, 2.0, 3.0, 0.2, 1.0], [5.0, 4.0, 0.1, 0.0, 1.0], 1.0, 1.0)
    fig = quadrant_figure(a)
    by_name = {q: trace for q, trace in zip(QUADRANTS, fig["data"], strict=True)}
    assert by_name["high_entropy_high_divergence"]["x"] == [2.0]
    assert by_name["high_entropy_low_divergence"]["x"] == [3.0]
    assert by_name["low_entropy_high_divergence"]["y"] == [5.0]
    # exactly at both thresholds: low and low, as summary.quadrants counts it
    assert by_name["low_entropy_low_divergence"]["x"] == [0.2, 1.0]
    for q, trace in by_name.items():
        share = a["summary"]["quadrants"][q]
        assert len(trace["x"]) / 5 == share["tokens"]
        assert f"{100 * share['tokens']:.0f}% of tokens" in trace["name"]
    assert [s["x0"] for s in fig["layout"]["shapes"]] == [1.0, 0] and fig["layout"]["shapes"][1]["y0"] == 1.0
    assert XSS not in json.dumps(fig) and "&lt;img" in by_name["low_entropy_high_divergence"]["hovertext"][0]
    pio.from_json(json.dumps(fig))  # a valid Plotly figure


def test_median_split_and_nothing_to_draw():
    a = analysis([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0])
    fig = quadrant_figure(a)
    assert sum(len(t["x"]) for t in fig["data"]) == 4
    assert quadrant_figure({"steps": a["steps"], "summary": {}}) is None  # stored before #26
    no_entropy = [{**s, "student_entropy": None} for s in a["steps"]]
    assert quadrant_figure({**a, "steps": no_entropy}) is None
    assert quadrant_figure({"steps": [], "summary": {"quadrants": quadrants([], [], None, None)}}) is None


def test_the_analysis_page_shows_the_scatter(tiny_client):
    body = {"prompt": "hello", "response": "the hello the world, hello there", "privileged": "hint"}
    a = tiny_client.post("/api/analyze", json=body).json()
    page = tiny_client.get(f"/analyses/{a['id']}").text
    assert 'id="quadrant-chart"' in page and 'id="quadrant-data"' in page
    start = page.index('id="quadrant-data">') + len('id="quadrant-data">')
    embedded = json.loads(page[start : page.index("</script>", start)])
    assert embedded == json.loads(json.dumps(quadrant_figure(a)))
    download = tiny_client.get(f"/analyses/{a['id']}/download").text
    assert 'id="quadrant-data"' in download


def test_the_summaries_carry_each_quadrants_shares(tiny_client):
    from support import upload, wait_done
    from vrollout.pipeline.digest import summary_of

    line = {"prompt": "hi", "response": "hello the world, hello there", "privileged": "say hello"}
    job = wait_done(tiny_client, upload(tiny_client, json.dumps(line)).json()["job"]["id"])
    item = tiny_client.get(f"/api/jobs/{job['id']}/items").json()[0]
    quads = tiny_client.get(f"/api/analyses/{item['analysis_id']}").json()["summary"]["quadrants"]
    table = list(
        csv.DictReader(io.StringIO(tiny_client.get(f"/api/jobs/{job['id']}/summaries?format=csv").text))
    )
    for q in QUADRANTS:
        for share in ("tokens", "signal"):
            assert float(table[0][f"{q}_{share}"]) == pytest.approx(quads[q][share], rel=1e-12, abs=1e-15)
    # a digest stored before these columns (version 7 keeps summary.quadrants nested) gives them too
    nested = summary_of({"analysis_id": "a", "quadrants": quads})
    assert nested["low_entropy_high_divergence_tokens"] == quads["low_entropy_high_divergence"]["tokens"]
    assert summary_of({"analysis_id": "b"})["high_entropy_high_divergence_signal"] is None
