"""The tables' data over HTTP (#28): the job page's rows and first screen, the mode column of
/jobs and the job table's columns on /analyses, on a tiny model's jobs."""

from __future__ import annotations

import json
import re

from support import GOOD, upload, wait_done
from vrollout.pipeline.digest import digest
from vrollout.report.overview import dataset_answer
from vrollout.report.tables import trajectory_row

LINES = [
    {**GOOD, "id": "a", "response": "hello the world", "reference_answer": "world", "step": 2},
    {**GOOD, "id": "b", "response": "no", "reference_answer": "world", "step": 1},
    {**GOOD, "id": "c", "response": "world world", "step": 2},
]


def run_job(client, lines=LINES) -> str:
    text = "\n".join(json.dumps(x) for x in lines)
    job_id = upload(client, text, privileged="the answer: world").json()["job"]["id"]  # KL > 0
    assert wait_done(client, job_id)["done"] == len(lines)
    return job_id


def test_table_and_overview_are_the_digests_rows_and_answer(tiny_client):
    job_id = run_job(tiny_client)
    items = tiny_client.get(f"/api/jobs/{job_id}/items").json()
    analyses = [tiny_client.get(f"/api/analyses/{i['analysis_id']}").json() for i in items]
    rows = tiny_client.get(f"/api/jobs/{job_id}/table").json()
    assert rows == json.loads(json.dumps([trajectory_row(digest(a)) for a in analyses]))
    assert all(len(r["kl_strip"]) == 10 for r in rows)
    first = tiny_client.get(f"/api/jobs/{job_id}/overview").json()
    assert first["answer"] == dataset_answer(digest(a) for a in analyses)
    pair = {"student": analyses[0]["student"]["model"], "teacher": analyses[0]["teacher"]["model"]}
    assert first["models"] == [{**pair, "trajectories": 3}]
    assert {"name": "continuation_tokens", "value": "0", "default": False} in first["settings"]
    page = tiny_client.get(f"/jobs/{job_id}").text
    assert first["answer"] in page.replace("&#39;", "'")  # in the first screen's HTML, before any fetch
    assert tiny_client.get("/api/jobs/nope/table").status_code == 404
    assert tiny_client.get("/api/jobs/nope/overview").status_code == 404


def test_jobs_page_has_a_mode_column(tiny_client):
    analysis = run_job(tiny_client, LINES[:1])
    steps = {"prompt": "hi", "id": "p", "steps": ["hello", "the world"], "label": 1}
    localization = run_job(tiny_client, [steps])
    page = tiny_client.get("/jobs").text
    modes = dict(re.findall(r'href="/jobs/(\w+)".*?<td data-key="mode">(\w+)</td>', page, re.S))
    assert modes == {analysis: "analyze", localization: "localize"}


def test_analyses_page_carries_the_job_tables_columns(tiny_client):
    job_id = run_job(tiny_client)
    single = tiny_client.post("/api/analyze", json={**GOOD, "response": "just one"}).json()
    page = tiny_client.get("/analyses").text
    head = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    for column in (
        "Response",
        "Verdict",
        "Job",
        "Step",
        "Div. / 100 tokens",
        "Top 5% share",
        "KL along the response",
    ):
        assert column in head, column
    rows = re.findall(r'<tr data-analysis="(\w+)">(.*?)</tr>', page, re.S)
    assert len(rows) == 4
    by_id = dict(rows)
    assert f'href="/jobs/{job_id}"' not in by_id[single["id"]]
    items = tiny_client.get(f"/api/jobs/{job_id}/items").json()
    wrong = next(i["analysis_id"] for i in items if i["line"] == 2)
    assert f'href="/jobs/{job_id}"' in by_id[wrong] and "line 2" in by_id[wrong]
    assert (
        '<td data-key="correct">wrong</td>' in by_id[wrong] and '<td data-key="step">1</td>' in by_id[wrong]
    )
    assert re.search(r'<td [^>]*data-key="response"[^>]*>(.*?)</td>', by_id[wrong], re.S).group(1) == "no"
    assert by_id[wrong].count("<rect") == 10  # the mini strip, one cell per tenth


def test_a_job_of_reasoning_lines_answers_thinking_apart_from_the_answer(tiny_client):
    lines = [{"prompt": "hi", "response": f"<think>hmm let me see {n}</think>the world"} for n in range(2)]
    job_id = run_job(tiny_client, lines)
    items = tiny_client.get(f"/api/jobs/{job_id}/items").json()
    analyses = [tiny_client.get(f"/api/analyses/{i['analysis_id']}").json() for i in items]
    parts = [a["summary"]["segments"] for a in analyses]
    thinking = sum(p["thinking"]["tokens"] for p in parts)
    answer = sum(p["answer"]["tokens"] for p in parts)
    think_kl = sum(p["thinking"]["reverse_kl_total"] for p in parts) / thinking
    answer_kl = sum(p["answer"]["reverse_kl_total"] for p in parts) / answer
    text = tiny_client.get(f"/api/jobs/{job_id}/overview").json()["answer"]
    assert text.endswith(
        f"Thinking carries {think_kl:.3f} nats per token over {thinking} tokens,"
        f" the answer {answer_kl:.3f} over {answer}."
    )
