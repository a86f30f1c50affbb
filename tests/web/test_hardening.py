"""Hostile input through every entry point, limits enforced before any model work, and faults:
the model out of memory, the disk full or read-only, a damaged database. Tiny model."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc

import pytest
import torch
from fastapi.testclient import TestClient
from support import GOOD, REPO, assert_error, tiny_settings, upload, wait_done
from vrollout.cli import commands as cli
from vrollout.config import Settings
from vrollout.errors import StorageError, TooLong
from vrollout.inputs.trajectories import parse_file
from vrollout.pipeline.analyzer import Analyzer
from vrollout.schema.requests import MAX_META_DEPTH
from vrollout.storage.store import Store
from vrollout.web.app import create_app

LONG = {"prompt": "x", "response": "hello the world", "continuation_tokens": 1}  # never batched
BIG = {**GOOD, "response": "the world " * 20}
SMALL = {"prompt": "hi", "response": "hi"}


@pytest.fixture
def forward_calls(tiny):
    """Every forward pass of the tiny models, counted (they share weights: one hook)."""
    calls = []
    embeddings = tiny.student.model.get_input_embeddings()
    handle = embeddings.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def client_with(tiny, tmp_path, **limits):
    settings = tiny_settings(tmp_path, **limits)
    return TestClient(create_app(settings, analyzer=Analyzer(tiny, settings)), raise_server_exceptions=False)


# Hostile and broken input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"[" * 100_000, 400, "parsing the body"),  # json raises RecursionError
        (b'{"prompt": "x", "response": "y", "top_k": ' + b"9" * 5000 + b"}", 400, "parsing the body"),
        ('{"prompt": "é", "response": "y"}'.encode("latin-1"), 400, ""),
        (bytes(range(256)) * 64, 400, ""),
        (b'{"prompt": "x", "respo', 400, "malformed JSON"),
        (
            json.dumps({"prompt": "x" * 1_000_000, "response": "y"}).encode(),
            413,
            "VROLLOUT_MAX_CONTEXT_TOKENS",
        ),
    ],
    ids=["deep", "digits", "latin-1", "binary", "truncated", "1MB"],
)
def test_hostile_bodies_get_a_clear_4xx(tiny_client, body, status, words):
    r = tiny_client.post("/api/analyze", content=body, headers={"content-type": "application/json"})
    assert_error(r, status, words)


def test_a_utf16_body_is_still_json(tiny_client):  # RFC 8259 allows it; json.loads detects it
    body = json.dumps(GOOD).encode("utf-16")
    r = tiny_client.post("/api/analyze", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["response_text"] == GOOD["response"]


def test_deeply_nested_meta_is_kept_or_refused_never_a_500(tiny_client):
    # Kept up to MAX_META_DEPTH levels (meta itself the first), refused past it (#24 item 9)
    levels = MAX_META_DEPTH - 1
    meta = {"deep": json.loads("[" * levels + "]" * levels)}
    r = tiny_client.post("/api/analyze", json={**GOOD, "meta": meta})
    assert r.status_code == 200, r.text
    assert tiny_client.get(f"/analyses/{r.json()['id']}").status_code == 200
    meta = {"deep": json.loads("[" * 200 + "]" * 200)}
    assert_error(tiny_client.post("/api/analyze", json={**GOOD, "meta": meta}), 422, "meta")


@pytest.mark.parametrize(
    "content,words",
    [
        (b"[" * 100_000, "nested too deeply"),
        ("\n".join([json.dumps(GOOD)] * 2).encode("utf-16"), "UTF-16"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "not UTF-8"),
        (b'[{"prompt": "x", "response": "y"}, {"prompt": ', "invalid JSON array"),
        (b'[{"prompt": "x", "response": "y"}] trailing', "extra data"),
    ],
    ids=["deep-array", "utf-16", "binary", "truncated-array", "trailing"],
)
def test_upload_files_that_cannot_be_a_job(tiny_client, content, words):
    r = upload(tiny_client, content)
    assert r.status_code == 422 and words in r.json()["error"], r.text


def test_upload_bad_lines_are_named_and_good_ones_run(tiny_client):
    lines = [
        json.dumps(GOOD).encode(),
        b'{"prompt": "' + "é".encode("latin-1") + b'", "response": "y"}',
        b'{"meta": ' + b"[" * 100_000,
        json.dumps({"prompt": "x" * 1_000_000, "response": "y"}).encode(),
        json.dumps(GOOD).encode()[:20],  # truncated
        json.dumps({**GOOD, "prompt": "a\u2028b"}).encode(),  # a JSON-legal line separator inside a string
    ]
    r = upload(tiny_client, b"\n".join(lines))
    assert r.status_code == 201, r.text
    assert r.json()["accepted"] == 2
    errors = {x["line"]: x["error"] for x in r.json()["rejected"]}
    assert errors[2].startswith("not UTF-8 text (byte 0xe9 at column 13)")
    assert errors[3] == "invalid JSON: nested too deeply"
    assert "VROLLOUT_MAX_CONTEXT_TOKENS" in errors[4]
    assert errors[5].startswith("invalid JSON")
    job = wait_done(tiny_client, r.json()["job"]["id"])
    assert (job["done"], job["failed"]) == (2, 0)


def test_millions_of_lines_are_refused_early_without_reading_everything(tiny_client):
    data = b"{}\n" * 3_000_000
    tracemalloc.start()
    with pytest.raises(TooLong, match="20000 lines"):
        parse_file(data, 20_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # the whole file as text or lines would be ~200 MB (speed: benchmarks/abuse.py)
    r = upload(tiny_client, data)
    assert_error(r, 413, "VROLLOUT_MAX_LINES_PER_JOB")
    with pytest.raises(TooLong, match="3 trajectories"):
        parse_file(json.dumps([GOOD] * 1_000_000).encode(), 3)


def test_cli_refuses_hostile_files_clearly(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Analyzer, "from_settings", classmethod(lambda cls, s, store=True: Analyzer(tiny, s)))
    cases = {
        "deep.json": (b"[" * 100_000, 2, "nested too deeply"),
        "utf16.jsonl": (json.dumps(GOOD).encode("utf-16"), 2, "UTF-16"),
        # The CLI streams (no upload limits): every empty line is its own error, then on to the next
        "many.jsonl": (b"{}\n" * 30_000, 1, "0 analysed, 30000 failed"),
        "mixed.jsonl": (
            json.dumps(GOOD).encode() + b"\n\xff\xfe{\n" + b"[" * 100_000,
            1,
            "mixed.jsonl:3: invalid",
        ),
    }
    for name, (content, code, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        out = tmp_path / f"{name}.out.jsonl"
        assert cli.main(["analyze", str(path), "--out", str(out), "--no-store"]) == code
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert "mixed.jsonl:2: not UTF-8" in err and len(out.read_text().splitlines()) == 1


# Every limit, before any model work -----------------------------------------------------------

LIMITS = {
    "max_request_bytes": (1000, {"prompt": "x" * 2000, "response": "y"}, 413, "VROLLOUT_MAX_REQUEST_BYTES"),
    "max_context_tokens": (30, {"prompt": "x" * 40, "response": "y"}, 413, "VROLLOUT_MAX_CONTEXT_TOKENS"),
    "max_response_tokens": (5, {"prompt": "x", "response": "y" * 10}, 413, "VROLLOUT_MAX_RESPONSE_TOKENS"),
    "max_top_k": (3, {**GOOD, "top_k": 4}, 422, "top_k must be at most 3 (VROLLOUT_MAX_TOP_K)"),
    "max_continuation_tokens": (2, {**GOOD, "continuation_tokens": 3}, 422, "continuation_tokens"),
    "max_new_tokens": (4, {"prompt": "x", "generation": {"max_new_tokens": 5}}, 422, "max_new_tokens"),
}


@pytest.mark.parametrize("name", LIMITS)
def test_each_limit_is_enforced_before_the_model_runs(tiny, tmp_path, forward_calls, name):
    value, body, status, words = LIMITS[name]
    with client_with(tiny, tmp_path, **{name: value}) as client:
        assert_error(client.post("/api/analyze", json=body), status, words)
        assert_error(client.post("/api/tasks", json=body), status, words)
        if name != "max_request_bytes":  # uploads have their own byte limit
            r = upload(client, json.dumps(body))
            assert_error(r, 422, "no valid trajectory")
        assert forward_calls == []
        assert client.post("/api/analyze", json=SMALL).status_code == 200  # the limit, not the server
        assert forward_calls


@pytest.mark.parametrize(
    "limits,content,words",
    [
        ({"max_upload_bytes": 1000}, json.dumps(GOOD) + "\n" + "x" * 2000, "VROLLOUT_MAX_UPLOAD_BYTES"),
        ({"max_lines_per_job": 2}, "\n".join([json.dumps(GOOD)] * 3), "VROLLOUT_MAX_LINES_PER_JOB"),
    ],
)
def test_upload_limits_are_enforced_before_the_model_runs(
    tiny, tmp_path, forward_calls, limits, content, words
):
    with client_with(tiny, tmp_path, **limits) as client:
        assert_error(upload(client, content), 413, words)
        assert forward_calls == [] and client.get("/api/jobs").json() == []


# Faults: the model out of memory --------------------------------------------------------------


@pytest.fixture(params=[torch.OutOfMemoryError, MemoryError], ids=["torch-oom", "MemoryError"])
def out_of_memory(request, monkeypatch):
    """The engine's replay runs out of memory on calls whose number is in `fail_on` (from 1)."""
    from vrollout.local import engine

    replay, calls, fail_on = engine.replay, [], {1}

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) in fail_on:
            raise request.param("CUDA out of memory. Tried to allocate 20.00 GiB")
        return replay(*args, **kwargs)

    monkeypatch.setattr(engine, "replay", failing)  # as `LocalBackend.replay` calls it
    return fail_on


def test_out_of_memory_is_a_503_and_the_next_request_succeeds(tiny_client, out_of_memory):
    r = tiny_client.post("/api/analyze", json=GOOD)
    assert_error(r, 503, "ran out of memory", "retry with a shorter input")
    assert "Traceback" not in r.text and "20.00 GiB" not in r.text
    assert tiny_client.post("/api/analyze", json=GOOD).status_code == 200


def test_out_of_memory_in_a_background_task(tiny_client, out_of_memory):
    task = tiny_client.post("/api/tasks", json=GOOD).json()
    for _ in range(200):
        state = tiny_client.get(task["url"]).json()
        if state["state"] in ("done", "error"):
            break
        time.sleep(0.05)
    assert state["state"] == "error" and state["error"]["status"] == 503
    assert "ran out of memory" in state["error"]["error"]


def test_out_of_memory_fails_one_job_line_and_the_job_goes_on(tiny_client, out_of_memory):
    out_of_memory.clear()
    out_of_memory.add(2)
    job_id = upload(tiny_client, "\n".join([json.dumps(LONG)] * 3)).json()["job"]["id"]
    job = wait_done(tiny_client, job_id)
    assert (job["state"], job["done"], job["failed"]) == ("done", 2, 1)
    failed = [i for i in tiny_client.get(f"/api/jobs/{job_id}/items").json() if i["state"] == "error"]
    assert failed[0]["line"] == 2 and "ran out of memory" in failed[0]["error"]


# Faults: the disk full, the database read-only or damaged ------------------------------------


def pragma_on_connect(monkeypatch, store: Store, pragma: str) -> None:
    """Every new connection of `store` gets `pragma`: SQLite's own read-only and size limits."""
    connect = store.connect

    def limited() -> sqlite3.Connection:
        db = connect()
        db.execute(pragma)
        return db

    monkeypatch.setattr(store, "connect", limited)


def page_count(store: Store) -> int:
    with store.connect() as db:
        return db.execute("PRAGMA page_count").fetchone()[0]


@pytest.mark.parametrize(
    "pragma,status,words",
    [
        ("PRAGMA max_page_count = {pages}", 507, "disk holding the database is full"),
        ("PRAGMA query_only = ON", 503, "read-only"),
    ],
    ids=["full", "read-only"],
)
def test_storage_failures_are_clear_and_lose_nothing(tiny_client, monkeypatch, pragma, status, words):
    store = tiny_client.app.state.store
    first = tiny_client.post("/api/analyze", json=GOOD).json()
    with monkeypatch.context() as m:
        pragma_on_connect(m, store, pragma.format(pages=page_count(store)))
        assert_error(tiny_client.post("/api/analyze", json=BIG), status, words)
        task = tiny_client.post("/api/tasks", json=BIG).json()
        deadline = time.time() + 30
        while (state := tiny_client.get(task["url"]).json())["state"] not in ("done", "error"):
            assert time.time() < deadline
            time.sleep(0.05)
        assert state["error"]["status"] == status and words in state["error"]["error"]
        assert tiny_client.get(f"/api/analyses/{first['id']}").json() == first
    assert tiny_client.get("/api/analyses").json()["total"] == 1
    assert tiny_client.post("/api/analyze", json=GOOD).status_code == 200


def test_a_full_disk_stops_the_job_and_resume_finishes_it(tiny_client, monkeypatch):
    store = tiny_client.app.state.store
    tiny_client.post("/api/analyze", json=GOOD)
    with monkeypatch.context() as m:
        pragma_on_connect(m, store, f"PRAGMA max_page_count = {page_count(store) + 2}")
        lines = [json.dumps({**LONG, "response": "hello the world " * 30})] * 4
        job_id = upload(tiny_client, "\n".join(lines)).json()["job"]["id"]
        job = wait_done(tiny_client, job_id)
        assert job["state"] == "cancelled" and job["pending"] > 0 and job["failed"] == 0
        assert "disk holding the database is full" in job["error"] and "resume" in job["error"]
        page = tiny_client.get(f"/jobs/{job_id}", headers={"accept": "text/html"}).text
        assert 'id="job-error" role="alert">' in page and "disk holding the database is full" in page
    tiny_client.post(f"/api/jobs/{job_id}/resume")
    time.sleep(0.2)
    job = wait_done(tiny_client, job_id)
    assert (job["state"], job["done"], job["error"]) == ("done", 4, None)
    page = tiny_client.get(f"/jobs/{job_id}", headers={"accept": "text/html"}).text
    assert 'id="job-error" role="alert" hidden>' in page


def damaged_databases(tmp_path):
    good = tmp_path / "good.sqlite3"
    store = Store(good)
    with store.connect() as db:
        db.execute("CREATE TABLE filler (x BLOB)")
        db.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4000,)] * 200)
    with store.connect() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    garbage, truncated = tmp_path / "garbage.sqlite3", tmp_path / "truncated.sqlite3"
    garbage.write_bytes(bytes(range(256)) * 40)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return [garbage, truncated]


def test_a_damaged_database_at_start_up_is_a_clear_error(tiny, tmp_path, capsys):
    for path in damaged_databases(tmp_path):
        for argv in (
            ["serve", "--port", "1"],
            ["analyze", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o")],
        ):
            (tmp_path / "x.jsonl").write_text(json.dumps(GOOD))
            assert cli.main([*argv, "--database", str(path)]) == 2
            err = capsys.readouterr().err
            assert str(path) in err and "move it aside" in err and "Traceback" not in err, err
        settings = Settings(database=path)
        with (
            pytest.raises(StorageError, match="move it aside"),
            TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))),
        ):
            pass


WRITER = """
import sys
import uuid
sys.path.insert(0, "tests")
from support.tiny import tiny_pair
from vrollout.config import Settings
from vrollout.pipeline.analyzer import Analyzer
from vrollout.storage.store import Store
settings = Settings(database=sys.argv[1], chunk_size=8)
analyzer = Analyzer(tiny_pair(), settings, Store(settings.database))
analysis = analyzer.analyze({"prompt": "x", "response": "hello the world " * 20, "continuation_tokens": 2})
while True:
    print(analysis["id"], flush=True)  # committed: save() returned
    analysis["id"] = uuid.uuid4().hex[:16]
    analyzer.store.save(analysis)
"""


def test_killed_while_writing_keeps_every_committed_analysis(tmp_path):
    database = tmp_path / "db.sqlite3"
    root = REPO
    cmd = [sys.executable, "-c", WRITER, str(database)]
    writer = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    committed = []
    try:
        while len(committed) < 300:
            line = writer.stdout.readline()
            assert line, "the writer exited"
            committed.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)  # mid-write, most likely: it does nothing else
        writer.wait(timeout=30)
    committed += writer.stdout.read().split()
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in db.execute("SELECT id FROM analyses")}
    assert set(committed) <= stored and len(stored) - len(committed) <= 1
    store = Store(database)
    assert store.get(committed[-1])["id"] == committed[-1]
