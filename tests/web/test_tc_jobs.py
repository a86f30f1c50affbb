"""Teacher contexts in jobs: the upload's teacher_context and teacher_template fields, the
sibling rule over the whole file, lines without a sibling rejected with the reason, and the kind
shown on the analysis page and in the job's summaries."""

from __future__ import annotations

import json

from support import assert_error, upload, wait_done

Q = "What is 6*7?"
LINES = [
    {"id": "a", "prompt": Q, "response": "6*7 = 41.", "reference_answer": "42"},
    {"id": "b", "prompt": Q, "response": "6*7 = 42.", "reference_answer": "42"},
    {"id": "c", "prompt": Q, "response": "It is 42.", "correct": True},
    {"id": "d", "prompt": "What is 2+2?", "response": "5", "reference_answer": "4"},
    {"id": "e", "prompt": Q, "response": "41", "teacher_context": "feedback", "feedback": "Off by one."},
]


def jsonl(lines) -> str:
    return "".join(json.dumps(x) + "\n" for x in lines)


def analyses_of(client, job_id: str) -> dict[str, dict]:
    items = client.get(f"/api/jobs/{job_id}/items").json()
    found = [client.get(f"/api/analyses/{i['analysis_id']}").json() for i in items if i.get("analysis_id")]
    return {a["trajectory"]["id"]: a for a in found}


def test_a_sibling_job(tiny_client):
    r = upload(tiny_client, jsonl(LINES), teacher_context="sibling")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accepted"] == 4
    [rejected] = body["rejected"]
    assert rejected["line"] == 4
    assert "no successful sibling: no other line of the file has this prompt" in rejected["error"]
    wait_done(tiny_client, body["job"]["id"])
    got = analyses_of(tiny_client, body["job"]["id"])
    kinds = {k: (a["teacher"]["context_kind"], a["teacher"]["sibling"]) for k, a in got.items()}
    assert kinds == {
        "a": ("sibling", {"line": 2, "id": "b"}),
        "b": ("sibling", {"line": 3, "id": "c"}),  # never itself
        "c": ("sibling", {"line": 2, "id": "b"}),
        "e": ("feedback", None),  # the line's own kind wins over the job's
    }
    assert got["a"]["teacher"]["privileged"] == "6*7 = 42."
    assert got["e"]["teacher"]["privileged"] == "Off by one."
    summaries = tiny_client.get(f"/api/jobs/{body['job']['id']}/summaries?format=json").json()
    assert {s["trajectory_id"]: s["teacher_context"] for s in summaries} == {
        "a": "sibling",
        "b": "sibling",
        "c": "sibling",
        "e": "feedback",
    }
    page = tiny_client.get(f"/analyses/{got['a']['id']}").text
    assert 'id="teacher-context-kind"' in page and '<b data-key="context_kind">sibling</b>' in page
    assert '<b data-key="sibling_line">2</b> (id <code>b</code>)' in page
    page = tiny_client.get(f"/analyses/{got['e']['id']}").text
    assert '<b data-key="context_kind">feedback</b> · the teacher was given the line\'s feedback' in page


def test_a_job_template_and_its_errors(tiny_client):
    lines = [{"id": "p", "prompt": Q, "response": "41", "privileged": "42"}]
    r = upload(tiny_client, jsonl(lines), teacher_template="Hint: {privileged}\n{prompt}")
    assert r.status_code == 201, r.text
    wait_done(tiny_client, r.json()["job"]["id"])
    [a] = analyses_of(tiny_client, r.json()["job"]["id"]).values()
    assert "Hint: 42\nWhat is 6*7?" in a["teacher"]["context_text"]
    assert a["teacher"]["context_kind"] == "privileged"
    page = tiny_client.get(f"/analyses/{a['id']}").text
    assert "the teacher was given the line's privileged info" in page
    assert_error(upload(tiny_client, jsonl(lines), teacher_template="{prompt}"), 422, "teacher_template")
    assert_error(upload(tiny_client, jsonl(lines), teacher_context="oracle"), 422, "teacher_context must be")
    # A line's bad template is that line's error, not the job's.
    r = upload(tiny_client, jsonl([*lines, {**lines[0], "teacher_template": "{privileged}"}]))
    assert r.status_code == 201
    assert r.json()["rejected"][0]["line"] == 2 and "teacher_template" in r.json()["rejected"][0]["error"]


def test_the_upload_page_offers_the_fields(tiny_client):
    page = tiny_client.get("/upload").text
    assert '<select id="teacher_context" name="teacher_context">' in page
    assert '<option value="sibling">' in page and '<option value="feedback">' in page
    assert 'name="teacher_template"' in page


def test_the_api_refuses_a_sibling_without_a_file(tiny_client):
    r = tiny_client.post("/api/analyze", json={"prompt": Q, "response": "41", "teacher_context": "sibling"})
    assert_error(r, 422, "only a file's lines have siblings")
    given = {"prompt": Q, "response": "41", "teacher_context": "sibling", "sibling": {"response": "42"}}
    r = tiny_client.post("/api/analyze", json=given)
    assert r.status_code == 200, r.text
    assert r.json()["teacher"]["context_kind"] == "sibling" and r.json()["teacher"]["privileged"] == "42"
