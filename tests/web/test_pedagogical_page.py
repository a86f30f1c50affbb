"""A pedagogical job's lines one at a time (GET /api/jobs/{id}/rollouts/{line}): the stored record
and the view the pages show (both texts, the substituted tokens marked, each verdict's parsed
answer and how), and the verdict of an answer that only restates the question (#28)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from support import GOOD, assert_error, tiny_settings, upload, wait_done
from vrollout.pipeline.analyzer import Analyzer
from vrollout.report.pedagogical import prompt_view
from vrollout.web.app import create_app

RAMBLING = "91-58 is a type of mathematical constant that is often used in mathematics."
LINES = [
    {"id": "rambling", "prompt": "What is 91-58?", "response": RAMBLING, "reference_answer": "33"},
    {"id": "worked", "prompt": "What is 91-58?", "response": "91 - 58 = 33", "reference_answer": "33"},
]


@pytest.fixture(scope="module")
def done(tiny, tmp_path_factory):
    settings = tiny_settings(tmp_path_factory.mktemp("ped-line"))
    with TestClient(
        create_app(settings, analyzer=Analyzer(tiny, settings)), raise_server_exceptions=False
    ) as client:
        text = "\n".join(json.dumps(line) for line in LINES)
        r = upload(client, text, mode="pedagogical", threshold=0.2, max_new_tokens=6)
        assert r.status_code == 201, r.text
        job = wait_done(client, r.json()["job"]["id"], timeout=300)
        assert job["state"] == "done"
        analysis_job = wait_done(client, upload(client, json.dumps(GOOD)).json()["job"]["id"])
        yield client, job["id"], analysis_job["id"]


def test_an_answer_that_restates_the_question_is_not_correct(done):
    client, job, _ = done
    rambling, worked = (client.get(f"/api/jobs/{job}/rollouts/{line}").json()["record"] for line in (1, 2))
    assert rambling["student"]["correct"] is False
    assert rambling["student"]["verdict"] == {
        "correct": False, "method": "math-verify", "parsed_answer": "91-58", "parsed_reference": "33",
        "extractor": "last expression", "restated": True, "text_form": None,
    }  # fmt: skip
    assert worked["student"]["correct"] is True
    assert (worked["student"]["verdict"]["parsed_answer"], worked["student"]["verdict"]["extractor"]) == (
        "33",
        "last number",
    )
    # the comparison counts it as the student's failure
    rows = client.get(f"/api/jobs/{job}/comparison").json()["rows"]
    assert [r["student_correct"] for r in rows] == [False, True]
    ped = rambling["pedagogical"]
    assert ped["verdict"]["correct"] is ped["correct"]


def test_one_line_gives_its_record_and_the_pages_view(done):
    client, job, _ = done
    body = client.get(f"/api/jobs/{job}/rollouts/1").json()
    record = body["record"]
    assert record["id"] == "rambling" and record["line"] == 1
    assert body["view"] == json.loads(json.dumps(prompt_view(record)))
    view = body["view"]
    assert view["student"]["text"] == record["student"]["response_text"]
    assert view["student"]["verdict"]["restated"] is True and "What is 91-58?" in view["question"]
    marked = [s["position"] for s in view["pedagogical"]["segments"] if s["teacher"]]
    assert marked == [i["position"] for i in record["pedagogical"]["interventions"]]


def test_a_missing_line_or_an_analysis_job_is_a_clear_error(done):
    client, job, analysis_job = done
    assert_error(client.get(f"/api/jobs/{job}/rollouts/99"), 404, "no rollout for line 99")
    assert_error(client.get(f"/api/jobs/{analysis_job}/rollouts/1"), 422, "mode=pedagogical")
    assert_error(client.get("/api/jobs/nope/rollouts/1"), 404)
    assert client.get(f"/api/jobs/{job}/rollouts/-1").status_code == 422
    assert client.get(f"/api/jobs/{job}/rollouts/x").status_code == 422
