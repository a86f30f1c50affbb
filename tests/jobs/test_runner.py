"""Batch jobs on the tiny model: line-level validation, progress events, cancel, exports."""

from __future__ import annotations

import io
import json
import threading
import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from support import GOOD, job_events, tiny_settings, upload, wait_done
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app


def test_mixed_good_and_bad_lines(tiny_client):
    lines = [
        json.dumps(GOOD),
        "{broken",
        json.dumps({"prompt": "x", "response": ""}),
        "",
        json.dumps({"prompt_ids": [1, 2], "response_ids": [3, 10**6]}),
        json.dumps([1, 2]),
        json.dumps({**GOOD, "id": "second", "reference_answer": "42"}),
    ]
    r = upload(tiny_client, "\n".join(lines), privileged="a hint", top_k=3)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["line"], x["error"].split(":")[0]) for x in body["rejected"]] == [
        (2, "invalid JSON"),
        (3, "the response is empty"),
        (5, "response_ids[1] = 1000000 is outside the vocabulary (0..262)"),
        (6, "a trajectory must be a JSON object, got list"),
    ]
    job = wait_done(tiny_client, body["job"]["id"])
    assert (job["state"], job["done"], job["failed"], job["total"]) == ("done", 2, 0, 2)
    assert job["name"] == "runs.jsonl" and job["tokens_done"] > 0
    items = tiny_client.get(f"/api/jobs/{job['id']}/items").json()
    assert [(i["line"], i["state"]) for i in items] == [(1, "done"), (7, "done")]
    a = tiny_client.get(f"/api/analyses/{items[1]['analysis_id']}").json()
    assert a["job"] == {"id": job["id"], "line": 7} and a["top_k"] == 3
    assert a["teacher"]["privileged"] == "a hint" and a["trajectory"]["id"] == "second"


@pytest.mark.parametrize(
    "content,status,words",
    [
        (b"\xff\xfe\x00garbage", 422, "UTF-16"),
        (b"", 422, "empty"),
        (b"not json at all\nneither this", 422, "no valid trajectory"),
        (b'[{"prompt": "x", "response": "y"', 422, "invalid JSON array"),
    ],
)
def test_files_that_cannot_be_a_job(tiny_client, content, status, words):
    r = upload(tiny_client, content)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_limits_on_size_lines_and_tokens(tiny, tmp_path):
    settings = tiny_settings(tmp_path, max_upload_bytes=2000, max_lines_per_job=3, max_response_tokens=50)
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        r = upload(client, json.dumps(GOOD) + "\n" + "x" * 3000)
        assert r.status_code == 413 and "VROLLOUT_MAX_UPLOAD_BYTES" in r.json()["error"]
        r = upload(client, "\n".join([json.dumps(GOOD)] * 4))
        assert r.status_code == 413 and "limit of 3" in r.json()["error"]
        long = json.dumps({"prompt": "x", "response": "hello " * 60})
        r = upload(client, json.dumps(GOOD) + "\n" + long)
        assert r.status_code == 201
        [rejected] = r.json()["rejected"]
        assert rejected["line"] == 2 and "over the limit of 50" in rejected["error"]


def test_json_array_file_and_progress_events(tiny_client):
    r = upload(tiny_client, json.dumps([GOOD, GOOD, GOOD]), name="../../etc/passwd")
    job_id = r.json()["job"]["id"]
    assert r.json()["job"]["name"] == "passwd"  # a display name, never a path
    events = job_events(tiny_client, job_id)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"progress"}
    done = [state["done"] for _, state in events]
    assert done == sorted(done) and done[-1] == 3 and events[-1][1]["state"] == "done"


def test_cancel_and_resume(tiny_client):
    # The model worker is held until the cancel is in: a tiny model could finish all 30 lines
    # before it (a race that CI lost once).
    release, started = threading.Event(), threading.Event()
    tiny_client.app.state.worker.submit(lambda progress: (started.set(), release.wait(60)))
    assert started.wait(10)
    try:
        r = upload(tiny_client, "\n".join([json.dumps({"prompt": "x", "response": "hello " * 40})] * 30))
        job_id = r.json()["job"]["id"]
        cancelled = tiny_client.post(f"/api/jobs/{job_id}/cancel").json()
    finally:
        release.set()
    job = wait_done(tiny_client, job_id)
    assert job["state"] == "cancelled" and job["done"] < 30 and cancelled["id"] == job_id
    tiny_client.post(f"/api/jobs/{job_id}/resume")
    time.sleep(0.2)
    job = wait_done(tiny_client, job_id)
    assert (job["state"], job["done"]) == ("done", 30)
    ids = [i["analysis_id"] for i in tiny_client.get(f"/api/jobs/{job_id}/items").json()]
    assert len(set(ids)) == 30  # every line exactly once


def test_exports_read_back_with_pandas(tiny_client):
    lines = [json.dumps({**GOOD, "id": f"t{i}", "reference_answer": "hello"}) for i in range(3)]
    job_id = upload(tiny_client, "\n".join(lines)).json()["job"]["id"]
    wait_done(tiny_client, job_id)
    summaries = pd.read_csv(io.StringIO(tiny_client.get(f"/api/jobs/{job_id}/summaries?format=csv").text))
    assert list(summaries["trajectory_id"]) == ["t0", "t1", "t2"] and summaries["correct"].all()
    rows = [
        json.loads(x) for x in tiny_client.get(f"/api/jobs/{job_id}/summaries?format=jsonl").text.splitlines()
    ]
    assert [r["line"] for r in rows] == [1, 2, 3]
    steps = pd.read_parquet(io.BytesIO(tiny_client.get(f"/api/jobs/{job_id}/steps").content))
    a = tiny_client.get(f"/api/analyses/{rows[0]['analysis_id']}").json()
    assert len(steps) == 3 * len(a["steps"])
    first = steps[steps["analysis_id"] == a["id"]].sort_values("position")
    assert list(first["reverse_kl"]) == pytest.approx([s["reverse_kl"] for s in a["steps"]])
    assert list(first["token"]) == [s["token"] for s in a["steps"]]
    figures = tiny_client.get(f"/api/jobs/{job_id}/figures").json()
    assert set(figures) == {"signal", "position", "agreement", "first_divergence", "kl_top_5pct", "kl_gini"}
    assert figures["agreement"]["data"][0]["name"].startswith("correct (3)")
    assert tiny_client.get(f"/api/jobs/{job_id}/steps?format=xml").status_code == 422
    assert tiny_client.get("/api/jobs/nope").status_code == 404


def test_batched_job_equals_single_analyses(tiny_client, monkeypatch):
    """Short lines share padded batches in a job; each result equals its own /api/analyze."""
    analyzer, batches = tiny_client.app.state.analyzer, []
    run_batch = analyzer.run_batch
    monkeypatch.setattr(
        analyzer, "run_batch", lambda preps, extras: batches.append(len(preps)) or run_batch(preps, extras)
    )
    texts = ["hello", "hello the world " * 5, "the", "world hello " * 7, "hel"]
    lines = [{"prompt": f"q{i}", "response": t, "privileged": "hint"} for i, t in enumerate(texts)]
    lines.append({**lines[0], "top_k": 2})
    job_id = upload(tiny_client, "\n".join(json.dumps(x) for x in lines)).json()["job"]["id"]
    wait_done(tiny_client, job_id)
    assert batches == [6]  # all six lines in one padded batch
    items = tiny_client.get(f"/api/jobs/{job_id}/items").json()
    for line, item in zip(lines, items, strict=True):
        got = tiny_client.get(f"/api/analyses/{item['analysis_id']}").json()
        want = tiny_client.post("/api/analyze", json=line).json()
        for a, b in zip(got["steps"], want["steps"], strict=True):
            assert a["reverse_kl"] == pytest.approx(b["reverse_kl"], abs=1e-5)
            assert a["teacher_logprob"] == pytest.approx(b["teacher_logprob"], abs=1e-5)
            assert (a["teacher_top1_id"], a["teacher_rank"]) == (b["teacher_top1_id"], b["teacher_rank"])
            assert [t["token_id"] for t in a["teacher_topk"]] == [t["token_id"] for t in b["teacher_topk"]]


def test_batch_plan_packs_short_lines_only(tiny, tmp_path):
    settings = tiny_settings(tmp_path, batch_tokens=200, batch_max_sequence=60)
    analyzer = Analyzer(tiny, settings)
    texts = {1: "hello", 2: "hello the world " * 10, 3: "the", 4: "hel", 5: "world " * 5}
    prepared = [(n, analyzer.prepare({"prompt": "q", "response": t})) for n, t in texts.items()]
    prepared.append((6, analyzer.prepare({"prompt": "q", "response": "hi", "continuation_tokens": 2})))
    plan = [[n for n, _ in group] for group in analyzer.plan_batches(prepared)]
    assert sorted(n for group in plan for n in group) == [1, 2, 3, 4, 5, 6]  # every line once
    assert [2] in plan and [6] in plan  # too long; continuations: alone
    for group in plan:
        longest = max(len(p.ctx.student_ids) + len(p.ctx.response_ids) for n, p in prepared if n in group)
        assert len(group) == 1 or (longest <= 60 and len(group) * longest <= 200)
    assert any(len(group) > 1 for group in plan)


def test_a_failed_batch_is_retried_line_by_line(tiny_client, monkeypatch):
    from vrollout.errors import ModelBusy

    def out_of_memory(preps, extras):
        raise ModelBusy("the model ran out of memory on a batch")

    monkeypatch.setattr(tiny_client.app.state.analyzer, "run_batch", out_of_memory)
    lines = [json.dumps({"prompt": f"q{i}", "response": "hello the"}) for i in range(4)]
    job_id = upload(tiny_client, "\n".join(lines)).json()["job"]["id"]
    job = wait_done(tiny_client, job_id)
    assert (job["done"], job["failed"]) == (4, 0)


def test_a_job_deleted_as_it_starts_is_skipped_and_the_runner_goes_on(tiny_client, monkeypatch):
    # A client's DELETE that lands after the runner loaded the job's lines and before it ran them
    # (the seam: right after `Jobs.pending`). The runner once died of the job's 404 there, and
    # every later job stayed queued until a restart.
    jobs, deleted = tiny_client.app.state.jobs, []
    pending = jobs.pending

    def pending_then_deleted(job_id: str) -> list:
        lines = pending(job_id)
        if not deleted:
            deleted.append(job_id)
            assert tiny_client.delete(f"/api/jobs/{job_id}").status_code == 200
        return lines

    monkeypatch.setattr(jobs, "pending", pending_then_deleted)
    first = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    second = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    job = wait_done(tiny_client, second)
    assert deleted == [first] and (job["state"], job["done"]) == ("done", 1)
    assert tiny_client.get(f"/api/jobs/{first}").status_code == 404


def test_a_job_that_fails_unexpectedly_stops_and_the_next_one_runs(tiny_client, monkeypatch):
    analyzer, calls = tiny_client.app.state.analyzer, []
    plan = analyzer.plan_batches

    def a_bug_the_first_time(prepared):
        calls.append(len(prepared))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return plan(prepared)

    monkeypatch.setattr(analyzer, "plan_batches", a_bug_the_first_time)
    first = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    second = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    job = wait_done(tiny_client, second)
    assert (job["state"], job["done"]) == ("done", 1)
    stopped = tiny_client.get(f"/api/jobs/{first}").json()
    assert (stopped["state"], stopped["pending"]) == ("cancelled", 1)
    assert stopped["error"].startswith("stopped: internal error")
    tiny_client.post(f"/api/jobs/{first}/resume")  # its lines were kept: it runs whole
    time.sleep(0.2)
    assert wait_done(tiny_client, first)["done"] == 1
