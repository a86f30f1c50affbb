"""The dataset's headline table over HTTP: the job export route in its four formats and the job
page that shows it, on a tiny model's job."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from support import GOOD, assert_error, upload, wait_done
from vrollout.pipeline.digest import digest
from vrollout.report.headline import headline


@pytest.fixture
def finished_job(tiny_client) -> str:
    lines = [
        {**GOOD, "id": f"t{n}", "response": text, "reference_answer": "world"}
        for n, text in enumerate(["hello the world", "the world is here", "no", "hello there", "world world"])
    ]
    lines.append({**GOOD, "id": "no-reference"})
    text = "\n".join(json.dumps(x) for x in lines)
    job_id = upload(tiny_client, text, privileged="the answer: world").json()["job"]["id"]  # KL > 0
    assert wait_done(tiny_client, job_id)["done"] == 6
    return job_id


def test_headline_route_in_every_format(tiny_client, finished_job):
    base = f"/api/jobs/{finished_job}/headline"
    table = tiny_client.get(base).json()
    items = tiny_client.get(f"/api/jobs/{finished_job}/items").json()
    analyses = [tiny_client.get(f"/api/analyses/{i['analysis_id']}").json() for i in items]
    assert table == json.loads(json.dumps(headline(digest(a) for a in analyses)))  # the stored digests' table
    assert [(g["name"], g["trajectories"]) for g in table["groups"]] == [
        ("all", 6),
        ("correct", 3),
        ("incorrect", 2),
    ]
    gini = next(r for r in table["rows"] if r["measure"] == "kl_gini")["cells"]["incorrect"]
    wrong = [a["summary"]["concentration"]["gini"] for a in analyses if "world" not in a["response_text"]]
    assert gini["median"] == pytest.approx(np.median(wrong)) and gini["n"] == 2

    r = tiny_client.get(base, params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="{finished_job}-headline.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert [x["measure"] for x in rows] == [x["measure"] for x in table["rows"]]
    md = tiny_client.get(base, params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("| measure | all (n=6) | correct (n=3) | incorrect (n=2) |")
    tex = tiny_client.get(base, params={"format": "tex"})
    assert tex.text.startswith(r"\begin{tabular}{lrrr}") and tex.text.count(r"\\") == len(table["rows"]) + 1

    assert_error(tiny_client.get(base, params={"format": "xlsx"}), 422, "format must be json, csv, md or tex")
    assert_error(tiny_client.get("/api/jobs/nope/headline"), 404)


def test_job_page_offers_the_headline_table(tiny_client, finished_job):
    html = tiny_client.get(f"/jobs/{finished_job}").text
    assert 'id="headline-table"' in html
    for fmt in ("md", "csv", "tex"):
        assert f"/api/jobs/{finished_job}/headline?format={fmt}" in html
    assert 'id="fig-kl_top_5pct"' in html and 'id="fig-kl_gini"' in html
    figures = tiny_client.get(f"/api/jobs/{finished_job}/figures").json()
    names = {t["name"] for t in figures["kl_gini"]["data"]}
    assert names == {"all (6)", "correct (3)", "incorrect (2)"}  # one line has no verdict: all beside
