"""Teachability, surface or fork, and the signal's concentration on the analysis page, its
figure, the notebook view and the step exports (in process, tiny model)."""

from __future__ import annotations

import io
import re

import pyarrow.parquet as pq
import pytest
from support.synthetic import synthetic_analysis
from vrollout.metrics.signal import headline, lorenz
from vrollout.notebook import render_html
from vrollout.report.dataset import STEP_COLUMNS, steps_parquet_chunks
from vrollout.report.figures import figure_dict

XSS = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'
BODY = {
    "prompt": "hello",
    "response": "the hello the world, hello there the end",
    "privileged": "hint",
    "continuation_tokens": 4,
    "reference_answer": "world",
    "recovery": True,
    "recovery_max_new_tokens": 4,
}


@pytest.fixture
def classified(tiny_client):
    resp = tiny_client.post("/api/analyze", json=BODY)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_every_divergence_is_classified(classified):
    s, steps = classified["summary"], classified["steps"]
    divergent = [x for x in steps if not x["agree"]]
    assert divergent, "the tiny random teacher disagrees somewhere"
    assert all(x["divergence_kind"] in ("surface", "fork") for x in divergent)
    assert all(x["divergence_kind"] is None and x["fork_matters"] is None for x in steps if x["agree"])
    assert s["divergences_classified"] == s["divergences"] == len(divergent)
    assert s["divergences_surface"] + s["divergences_fork"] == s["divergences"]
    forks = [x for x in divergent if x["divergence_kind"] == "fork"]
    assert all(isinstance(x["fork_matters"], bool) for x in forks)
    assert s["forks_that_matter"] == sum(x["fork_matters"] for x in forks)
    assert all(0.0 <= x["teacher_mass_on_student_topk"] <= 1.0 + 1e-6 for x in steps)
    assert s["divergences_in_student_topk"] == sum(bool(x["correction_in_student_topk"]) for x in divergent)
    # Recovery tried every prefix after a divergence (the response is short: all of them).
    tried = {p["position"] for p in classified["recovery"]["points"]}
    assert {x["position"] + 1 for x in divergent} - {len(steps)} <= tried


def test_headline_parts():
    summary = {
        "divergences": 12,
        "divergences_classified": 12,
        "divergences_surface": 7,
        "divergences_fork": 5,
        "forks_that_matter": 2,
        "concentration": {"top_5pct": 0.634},
    }
    text, missing = headline(summary)
    assert (
        text
        == "12 divergences: 7 surface, 5 forks (2 that matter); the top 5% of tokens carry 63% of the signal"
    )
    assert missing == []
    text, missing = headline({**summary, "forks_that_matter": None})
    assert text == "12 divergences: 7 surface, 5 forks; the top 5% of tokens carry 63% of the signal"
    assert missing and "recovery" in missing[0]
    text, missing = headline(
        {"divergences": 1, "divergences_classified": None, "concentration": {"top_5pct": 1.0}}
    )
    assert text == "1 divergence; the top 5% of tokens carry 100% of the signal"
    assert "continuations" in missing[0]
    old = {"divergences": 3}  # stored before any of it
    assert headline(old)[0] == "3 divergences" and len(headline(old)[1]) == 2


def test_page_shows_headline_kinds_and_legend(tiny_client, classified):
    page = tiny_client.get(f"/analyses/{classified['id']}").text
    text, missing = headline(classified["summary"])
    assert f'<p class="headline" id="headline">{text}</p>' in page and not missing
    assert 'id="kind-legend"' in page and "fork that matters" in page
    # Each column's kind: the strip is drawn by the script now (test_the_page_in_a_browser).
    assert 'data-key="teacher_mass_on_student_topk_mean"' in page


def test_page_without_continuations_says_how_to_classify(tiny_client):
    a = tiny_client.post(
        "/api/analyze", json={"prompt": "hello", "response": "the hello the world", "privileged": "hint"}
    ).json()
    assert a["summary"]["divergences"] > 0 and a["summary"]["divergences_classified"] is None
    page = tiny_client.get(f"/analyses/{a['id']}").text
    assert "Ask for continuations" in page and 'id="kind-legend"' not in page
    assert re.search(r'id="headline">\d+ divergences?; the top 5% of tokens carry \d+% of the signal<', page)


def test_figure_has_the_lorenz_curves(tiny_client, classified):
    fig = tiny_client.get(f"/api/analyses/{classified['id']}/figure").json()
    by_name = {t["name"]: t for t in fig["data"]}
    kl = by_name["Lorenz: reverse KL"]
    want = lorenz([s["reverse_kl"] for s in classified["steps"]])
    assert kl["x"] == want["x"] and kl["y"] == pytest.approx(want["y"])
    assert (kl["xaxis"], kl["yaxis"]) == ("x2", "y5")
    adv = by_name["Lorenz: |advantage|"]
    assert adv["y"] == pytest.approx(lorenz([abs(s["advantage"]) for s in classified["steps"]])["y"])
    assert fig["layout"]["yaxis5"]["domain"] == fig["layout"]["yaxis"]["domain"]  # beside the KL
    # The curve agrees with the summary: at x = 5% it reads top_5pct.
    assert kl["y"][5] == pytest.approx(classified["summary"]["concentration"]["top_5pct"])
    # Teachability and the kind are in the hover of each divergence.
    hover = next(
        h
        for h, s in zip(by_name["reverse KL (nats)"]["hovertext"], classified["steps"], strict=True)
        if not s["agree"]
    )
    assert "teacher mass on student top-k" in hover and ("surface" in hover or "fork" in hover)


def test_no_signal_no_lorenz_curve(classified):
    flat = {**classified, "steps": [{**s, "reverse_kl": 0.0, "advantage": 0.0} for s in classified["steps"]]}
    flat.pop("recovery")
    fig = figure_dict(flat)
    names = [t["name"] for t in fig["data"]]
    assert len(names) == 4 and not any(n.startswith("Lorenz") or n == "even spread" for n in names)
    assert fig["layout"]["annotations"][-1]["text"] == "no signal"


def test_notebook_view_carries_the_headline_escaped(classified):
    text, _ = headline(classified["summary"])
    assert f'<p class="vr-headline">{text}</p>' in render_html(classified)
    hostile = {**classified, "summary": {**classified["summary"], "divergences": XSS}}
    assert "<script>" not in render_html(hostile)


def test_step_exports_carry_the_new_columns(classified):
    old = synthetic_analysis(5, top_k=2)  # stored before the fields: nulls
    data = b"".join(steps_parquet_chunks([classified, old]))
    table = pq.read_table(io.BytesIO(data)).to_pylist()
    assert set(STEP_COLUMNS) >= {"teacher_mass_on_student_topk", "divergence_kind", "fork_matters"}
    for row, step in zip(table, classified["steps"], strict=False):
        for name in (
            "teacher_mass_on_student_topk",
            "correction_in_student_topk",
            "divergence_kind",
            "fork_matters",
        ):
            assert row[name] == step[name], name
    assert all(row["divergence_kind"] is None for row in table[len(classified["steps"]) :])


@pytest.mark.browser
def test_the_page_in_a_browser(tiny_client, classified, browser, tmp_path):
    """The one-file download, opened from disk: the kinds are coloured apart, a divergence's
    details say its teachability and kind, and the Lorenz panel is drawn and does not select
    tokens."""
    path = tmp_path / "analysis.html"
    path.write_bytes(tiny_client.get(f"/analyses/{classified['id']}/download").content)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.is_visible("#kind-legend") and page.is_visible("#headline")
    colours = {
        kind: page.eval_on_selector(f"#strip .col.{kind} .tea", "e => getComputedStyle(e).backgroundColor")
        for kind in ("surface", "fork")
        if page.locator(f"#strip .col.{kind}").count()
    }
    for step in classified["steps"]:
        col = page.get_attribute(f"#strip .col[data-i='{step['position']}']", "class").split()
        kind = step["divergence_kind"]
        assert ("surface" in col) == (kind == "surface") and ("fork" in col) == (kind == "fork")
        assert ("matters" in col) == bool(step["fork_matters"])
    unclassified = "rgb(253, 227, 200)"  # a divergence's colour without a kind (app.css .col.div)
    assert colours and unclassified not in colours.values() and len(set(colours.values())) == len(colours)
    first = next(s for s in classified["steps"] if not s["agree"])
    page.click(f"#strip .col[data-i='{first['position']}']")
    details = page.text_content("#selected")
    assert "teacher mass on the student's top-" in details
    assert ("surface divergence" if first["divergence_kind"] == "surface" else "fork") in details
    names = page.evaluate("document.getElementById('chart').data.map(t => t.name)")
    assert "Lorenz: reverse KL" in names and "Lorenz: |advantage|" in names
    assert errors == []
    context.close()
