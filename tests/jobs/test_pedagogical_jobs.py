"""Pedagogical jobs on the tiny model: the rollout records against Analyzer.analyze and
Analyzer.pedagogical run directly, progress events, cancel mid-line, resume, bad options,
deletion and retention."""

from __future__ import annotations

import json
import threading
import time

import pytest
from support import assert_error, job_events, upload, wait_done
from vrollout.storage import jobs as jobs_module

LINES = [
    {"id": "sum", "prompt": "What is 2+2?", "privileged": "2+2 = 4", "reference_answer": "4"},
    {
        "prompt": [{"role": "user", "content": "hi"}],
        "response": "hello the world",
        "reference_answer": "world",
    },
    {"messages": [{"role": "user", "content": "say hi"}]},  # no response, no reference
]
OPTIONS = {"threshold": 0.2, "sweep": "0.01, 0.5", "max_new_tokens": 6, "temperature": 0.7, "seed": 3}
RECORD_KEYS = {
    "id", "line", "prompt", "prompt_text", "reference_answer", "student", "opd", "pedagogical", "sweep",
}  # fmt: skip


def jsonl(lines: list[dict]) -> str:
    return "\n".join(json.dumps(line) for line in lines)


def run_job(client, lines, **options) -> tuple[dict, list[dict]]:
    r = upload(client, jsonl(lines), mode="pedagogical", **options)
    assert r.status_code == 201, r.text
    job = wait_done(client, r.json()["job"]["id"], timeout=300)
    return job, list(client.app.state.jobs.rollouts(job["id"]))


def approx_records(rows: list[dict]) -> list[dict]:
    """Rows whose floats compare within float32 rounding (1e-5), everything else exactly."""
    return [
        {k: pytest.approx(v, abs=1e-5) if isinstance(v, float) else v for k, v in r.items()} for r in rows
    ]


def test_records_agree_with_analyze_and_pedagogical_run_directly(tiny_client):
    job, records = run_job(tiny_client, LINES, **OPTIONS)
    assert (job["state"], job["done"], job["failed"], job["mode"]) == ("done", 3, 0, "pedagogical")
    assert job["options"]["generation"] == {"max_new_tokens": 6, "temperature": 0.7, "top_p": 1.0, "seed": 3}
    assert tiny_client.get(f"/api/jobs/{job['id']}").json()["mode"] == "pedagogical"
    assert [r["line"] for r in records] == [1, 2, 3] and [r["id"] for r in records] == ["sum", "2", "3"]
    analyzer = tiny_client.app.state.analyzer
    generation = job["options"]["generation"]
    prompts = [[{"role": "user", "content": "What is 2+2?"}], LINES[1]["prompt"], LINES[2]["messages"]]
    for line, record, prompt in zip(LINES, records, prompts, strict=True):
        assert set(record) == RECORD_KEYS
        assert (record["prompt"], record["prompt_text"]) == (prompt, None)
        # (1) the student's own rollout, analysed as usual: the stored analysis is OPD's view.
        stored = tiny_client.get(f"/api/analyses/{record['student']['analysis_id']}").json()
        assert stored["job"] == {"id": job["id"], "line": record["line"]}
        direct = analyzer.run(analyzer.prepare({**line, "generation": generation}), store=False)
        student = record["student"]
        assert student["response_ids"] == direct["response_ids"] == stored["response_ids"]
        assert student["response_text"] == direct["response_text"]
        assert student["generated"] is ("response" not in line)
        summary = direct["summary"]
        assert record["opd"]["divergences"] == summary["divergences"]
        assert record["opd"]["reverse_kl_total"] == pytest.approx(summary["reverse_kl_total"], abs=1e-9)
        assert record["opd"]["forks_that_matter"] is None  # no recovery asked for
        # (2) the pedagogical rollout (and sweep) on the same contexts, with the same settings.
        request = {k: v for k, v in line.items() if k != "response"}
        prepared = analyzer.prepare_pedagogical(
            {**request, "threshold": 0.2, "sweep": [0.01, 0.5], "generation": generation}
        )
        assert prepared.student_ids == stored["student"]["context_ids"]
        assert prepared.teacher_ids == stored["teacher"]["context_ids"]
        rollout = analyzer.pedagogical(prepared)
        ped = record["pedagogical"]
        # The job decodes its lines' rollouts together (Analyzer.pedagogical_batch): the same
        # tokens and interventions, log-probs equal within float32 rounding of another batch shape.
        for key in ("policy", "response_ids", "response_text", "num_interventions"):
            assert ped[key] == rollout[key], key
        assert approx_records(ped["tokens"]) == rollout["tokens"]
        assert approx_records(ped["interventions"]) == rollout["interventions"]
        assert ped["reached_reference"] == rollout["reached_reference"]
        assert approx_records(record["sweep"]) == rollout["sweep"] and [
            p["threshold"] for p in record["sweep"]
        ] == [
            0.01,
            0.5,
        ]
        # `correct`: one reference check for both, null without a reference.
        reference = line.get("reference_answer")
        assert record["reference_answer"] == reference
        if reference is None:
            assert student["correct"] is None and ped["correct"] is None
        else:
            assert isinstance(student["correct"], bool) and isinstance(ped["correct"], bool)
    assert records[1]["student"]["correct"] is True  # "hello the world" holds "world"


def test_rollouts_stream_in_line_order_in_chunks(tiny_client, monkeypatch):
    monkeypatch.setattr(jobs_module, "CHUNK", 2)
    lines = [{"id": f"q{i}", "prompt": f"q{i}", "response": "hello"} for i in range(5)]
    job, records = run_job(tiny_client, lines, max_new_tokens=2)
    assert [r["id"] for r in records] == [f"q{i}" for i in range(5)]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]


def test_progress_events(tiny_client):
    lines = [{"prompt": f"q{i}", "response": "hello"} for i in range(3)]
    r = upload(tiny_client, jsonl(lines), mode="pedagogical", max_new_tokens=3)
    job_id = r.json()["job"]["id"]
    events = job_events(tiny_client, job_id)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"progress"}
    done = [state["done"] for _, state in events]
    assert done == sorted(done) and done[-1] == 3
    assert {state["mode"] for _, state in events} == {"pedagogical"}


def test_cancel_stops_a_line_at_a_step_boundary(tiny_client, monkeypatch):
    # One long line (its rollout and sweep decode up to 5 x 400 tokens): the cancel lands inside
    # its pedagogical rollout and stops it at the next step, long before it could finish.
    analyzer = tiny_client.app.state.analyzer
    inside, cancelled = threading.Event(), threading.Event()
    real = analyzer.pedagogical_batch

    def pedagogical_batch(preps, progress):
        def held(stage, done, total):  # the first step waits for the cancel to be posted
            if not inside.is_set():
                inside.set()
                cancelled.wait(60)
            progress(stage, done, total)

        return real(preps, held)

    monkeypatch.setattr(analyzer, "pedagogical_batch", pedagogical_batch)
    line = {"prompt": "tell me a long story", "response": "hello"}
    r = upload(
        tiny_client, jsonl([line]), mode="pedagogical", max_new_tokens=400, sweep="0.001,0.002,0.003,0.004"
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    assert inside.wait(120)
    asked = time.time()
    tiny_client.post(f"/api/jobs/{job_id}/cancel")
    cancelled.set()
    job = wait_done(tiny_client, job_id, timeout=120)
    assert time.time() - asked < 20
    assert job["state"] == "cancelled" and (job["done"], job["failed"], job["pending"]) == (0, 0, 1), job
    assert list(tiny_client.app.state.jobs.rollouts(job_id)) == []  # nothing of the line kept


def test_cancel_and_resume_run_every_line_once(tiny_client, monkeypatch):
    # Rollouts decode two lines at a time (VROLLOUT_PEDAGOGICAL_BATCH): a cancel lands between groups.
    analyzer = tiny_client.app.state.analyzer
    monkeypatch.setattr(analyzer.settings, "pedagogical_batch", 2)
    # The second group waits for the cancel: eight short lines could all be done before it.
    first, groups, cancel_sent = analyzer.pedagogical_batch, [], threading.Event()

    def held(*args, **kwargs):
        groups.append(1)
        if len(groups) == 2:
            assert cancel_sent.wait(60)
        return first(*args, **kwargs)

    monkeypatch.setattr(analyzer, "pedagogical_batch", held)
    lines = [{"prompt": f"q{i}", "response": "hello"} for i in range(8)]
    job_id = upload(tiny_client, jsonl(lines), mode="pedagogical", max_new_tokens=4).json()["job"]["id"]
    deadline = time.time() + 120
    while tiny_client.get(f"/api/jobs/{job_id}").json()["done"] < 1:
        assert time.time() < deadline
        time.sleep(0.02)
    tiny_client.post(f"/api/jobs/{job_id}/cancel")
    cancel_sent.set()
    job = wait_done(tiny_client, job_id, timeout=120)
    assert job["state"] == "cancelled" and 1 <= job["done"] < 8, job
    assert len(list(tiny_client.app.state.jobs.rollouts(job_id))) == job["done"]
    tiny_client.post(f"/api/jobs/{job_id}/resume")
    time.sleep(0.2)
    job = wait_done(tiny_client, job_id, timeout=300)
    assert (job["state"], job["done"], job["failed"]) == ("done", 8, 0)
    records = list(tiny_client.app.state.jobs.rollouts(job_id))
    assert [r["line"] for r in records] == list(range(1, 9))
    ids = [i["analysis_id"] for i in tiny_client.get(f"/api/jobs/{job_id}/items").json()]
    assert len(set(ids)) == 8 and [r["student"]["analysis_id"] for r in records] == ids


@pytest.mark.parametrize(
    "form,status,words",
    [
        ({"mode": "rollouts"}, 422, ["mode must be analysis or pedagogical"]),
        ({"mode": "pedagogical", "threshold": 1.5}, 422, ["threshold", "less than 1"]),
        ({"mode": "pedagogical", "threshold": "abc"}, 422, ["threshold"]),
        ({"mode": "pedagogical", "sweep": "0.1,lots"}, 422, ["sweep", "comma-separated"]),
        ({"mode": "pedagogical", "sweep": "0.1,1.5"}, 422, ["sweep[1]"]),
        ({"mode": "pedagogical", "max_rank": 10**6}, 422, ["max_rank", "vocabulary"]),
        ({"mode": "pedagogical", "top_p": 0}, 422, ["top_p"]),
        ({"mode": "pedagogical", "temperature": -1}, 422, ["temperature"]),
        ({"mode": "pedagogical", "seed": -1}, 422, ["seed"]),
        ({"mode": "pedagogical", "max_new_tokens": 0}, 422, ["max_new_tokens"]),
        ({"mode": "pedagogical", "max_new_tokens": 900, "sweep": "0.1,0.2,0.3,0.4,0.5"}, 413,
         ["VROLLOUT_MAX_PEDAGOGICAL_COST"]),
    ],
)  # fmt: skip
def test_bad_options_are_refused_naming_the_field(tiny_client, form, status, words):
    r = upload(tiny_client, jsonl(LINES), **form)
    assert_error(r, status, *words)
    assert tiny_client.get("/api/jobs").json() == []  # no job was made


def test_analysis_jobs_are_unchanged_and_say_their_mode(tiny_client):
    r = upload(tiny_client, jsonl([{"prompt": "hi", "response": "hello"}]), threshold=0.3)  # ignored
    job = wait_done(tiny_client, r.json()["job"]["id"])
    assert (job["mode"], job["done"]) == ("analysis", 1) and "threshold" not in job["options"]
    assert list(tiny_client.app.state.jobs.rollouts(job["id"])) == []


def test_deleting_or_purging_a_job_deletes_its_rollouts(tiny_client):
    jobs = tiny_client.app.state.jobs
    lines = [{"prompt": "hi", "response": "hello"}]
    first, _ = run_job(tiny_client, lines, max_new_tokens=2)
    second, records = run_job(tiny_client, lines, max_new_tokens=2)
    assert len(records) == 1

    def count(job_id: str) -> int:
        with jobs.store.connect() as db:
            return db.execute("SELECT COUNT(*) FROM job_rollouts WHERE job_id = ?", (job_id,)).fetchone()[0]

    assert tiny_client.delete(f"/api/jobs/{first['id']}").status_code == 200
    assert count(first["id"]) == 0 and count(second["id"]) == 1
    assert jobs.purge("9999-01-01") == (1, 1)
    assert count(second["id"]) == 0


@pytest.mark.real_model
def test_a_pedagogical_job_on_the_default_model(real_client):
    mult = {"prompt": "What is 17*23?", "privileged": "17*23 = 340 + 51 = 391.", "reference_answer": "391"}
    add = {
        "prompt": "What is 2+2? Answer with the number.",
        "privileged": "2+2 = 4.",
        "reference_answer": "4",
    }
    wrong = {**mult, "response": "17*23 = 381."}
    lines = [{"id": "mult", **mult}, {"id": "add", **add}, {"id": "wrong", **wrong}]
    job, records = run_job(real_client, lines, max_new_tokens=48, sweep="0.01,0.2")
    assert (job["done"], job["failed"], job["mode"]) == (3, 0, "pedagogical")
    assert [r["id"] for r in records] == ["mult", "add", "wrong"]
    given = records[2]
    assert given["student"]["generated"] is False and given["student"]["correct"] is False
    assert given["opd"]["divergences"] >= 1 and given["opd"]["reverse_kl_total"] > 0
    for record in records:
        ped = record["pedagogical"]
        assert isinstance(ped["correct"], bool) and len(ped["response_ids"]) <= 48
        assert ped["num_interventions"] == len(ped["interventions"])
        assert [p["threshold"] for p in record["sweep"]] == [0.01, 0.2]
    # The job's rollout of a line is the one Analyzer.pedagogical gives for it directly.
    analyzer = real_client.app.state.analyzer
    body = {k: v for k, v in lines[0].items() if k != "id"}
    direct = analyzer.pedagogical(
        analyzer.prepare_pedagogical({**body, "sweep": [0.01, 0.2], "generation": {"max_new_tokens": 48}})
    )
    assert records[0]["pedagogical"]["response_ids"] == direct["response_ids"]
    assert records[0]["sweep"] == direct["sweep"]
