"""Plotly draws tick labels, trace text and hover text as HTML: every string a line brings into a
figure is escaped, as the token figure's are, so a `step` or an `id` cannot draw bold text or a
clickable off-site link on a page (issue #24, item 10). The exports keep the text as given."""

from __future__ import annotations

import html
import json

from support import GOOD, upload, wait_done
from vrollout.report.pedagogical_figures import scatter_figure

MARKUP = '<b>x</b><a href="https://evil">y</a>'
RAW = ("<b>", "<a ", "<a>")  # a tag; its text, escaped, is harmless


def assert_no_raw_markup(figure: dict) -> None:
    text = json.dumps(figure)
    for raw in RAW:
        assert raw not in text, raw
    assert json.dumps(html.escape(MARKUP))[1:-1] in text  # shown as the text it is


def test_a_step_name_is_escaped_in_the_jobs_drift_figures(tiny_client):
    lines = [{**GOOD, "step": MARKUP}, {**GOOD, "step": "plain", "response": "hello"}]
    job = upload(tiny_client, "\n".join(json.dumps(line) for line in lines) + "\n").json()["job"]
    assert wait_done(tiny_client, job["id"])["done"] == 2
    figures = tiny_client.get(f"/api/jobs/{job['id']}/figures").json()
    drift = {key: figure for key, figure in figures.items() if key.startswith("drift_")}
    assert drift, "the job's lines carry steps: its drift figures are drawn"
    for figure in drift.values():
        assert figure["data"][0]["x"] == [html.escape(MARKUP), "plain"]
        assert_no_raw_markup(figure)
    rows = tiny_client.get(f"/api/jobs/{job['id']}/drift").json()
    assert [r["step"] for r in rows] == [MARKUP, "plain"]  # the export keeps the step as given


def test_a_line_id_is_escaped_in_the_pedagogical_scatter():
    rows = [{"id": MARKUP, "pedagogical_correct": True, "opd_divergences": 2, "interventions": 1}]
    assert_no_raw_markup(scatter_figure(rows))
