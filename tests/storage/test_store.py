"""The store and jobs below HTTP: connections close, old databases migrate, exports read digests
(not analyses) in bounded memory, deletion and retention."""

from __future__ import annotations

import csv
import datetime as dt
import gc
import io
import json
import os
import sqlite3
import tracemalloc
import zlib

import pandas as pd
import pyarrow.parquet as pq
import pytest
from support.synthetic import synthetic_analysis, synthetic_job
from vrollout.errors import NotFound
from vrollout.pipeline.digest import SUMMARY_COLUMNS, digest, is_current, summary_of, summary_row
from vrollout.report.dataset import (
    figures_of,
    step_rows,
    steps_parquet,
    steps_parquet_chunks,
    summaries_csv_chunks,
)
from vrollout.storage import store as store_module
from vrollout.storage.jobs import Jobs
from vrollout.storage.retention import purge_older_than
from vrollout.storage.store import Store

# The schema of analyses before digests were stored beside them.
OLD_SCHEMA = """
CREATE TABLE analyses (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, student TEXT NOT NULL,
    teacher TEXT NOT NULL, tokens INTEGER NOT NULL, summary TEXT NOT NULL, preview TEXT NOT NULL,
    data BLOB NOT NULL);
CREATE TABLE jobs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, name TEXT NOT NULL,
    state TEXT NOT NULL, options TEXT NOT NULL, total INTEGER NOT NULL, rejected TEXT NOT NULL,
    started_at TEXT, finished_at TEXT);
CREATE TABLE job_items (job_id TEXT NOT NULL, line INTEGER NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL, analysis_id TEXT, tokens INTEGER, error TEXT, PRIMARY KEY (job_id, line));
"""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def jobs(tmp_path) -> Jobs:
    return Jobs(Store(tmp_path / "db.sqlite3"))


def test_a_connection_closes_at_the_end_of_its_with_block(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    gc.collect()
    gc.disable()  # what is left to the garbage collector stays open
    try:
        idle = open_fds()
        for _ in range(100):
            with store.connect() as db:
                db.execute("SELECT COUNT(*) FROM analyses").fetchone()
        with pytest.raises(sqlite3.IntegrityError), store.connect() as db:
            db.execute("INSERT INTO analyses (id) VALUES (NULL)")
        assert open_fds() <= idle + 1
    finally:
        gc.enable()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        db.execute("SELECT 1")


def test_an_old_database_keeps_working_and_gets_its_digests(tmp_path):
    path = tmp_path / "old.sqlite3"
    analyses = [synthetic_analysis(30, top_k=3, seed=n, job={"id": "j1", "line": n}) for n in (1, 2)]
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO jobs VALUES ('j1', '2024-01-01', 'old.jsonl', 'done', '{}', 2, '[]', NULL, NULL)"
        )
        for n, a in enumerate(analyses, 1):
            blob = zlib.compress(json.dumps(a).encode())
            row = (a["id"], a["created_at"], "s", "t", 30, json.dumps(a["summary"]), "p", blob)
            db.execute("INSERT INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            db.execute("INSERT INTO job_items VALUES ('j1', ?, '{}', 'done', ?, 30, NULL)", (n, a["id"]))
    db.close()
    jobs = Jobs(Store(path))
    assert [summary_of(d) for d in jobs.digests("j1")] == [summary_row(a) for a in analyses]
    with jobs.store.connect() as db:
        stored = [json.loads(d) for (d,) in db.execute("SELECT digest FROM analyses ORDER BY rowid")]
    assert [summary_of(d) for d in stored] == [summary_row(a) for a in analyses]  # computed once
    assert jobs.store.get(analyses[0]["id"]) == analyses[0]
    Jobs(Store(path))  # opening a migrated database again changes nothing


def test_digests_of_an_older_version_are_made_again_once(jobs):
    """A digest stored before its newest keys existed (here: before concentration) is rebuilt
    from the analysis when a view first reads it, then read as stored."""
    job_id = synthetic_job(jobs, lines=2, tokens=30, top_k=2)
    analyses = jobs.analyses(job_id)
    with jobs.store.connect() as db:
        for a in analyses:
            old = {k: v for k, v in digest(a).items() if not k.startswith(("kl_top", "kl_gini", "version"))}
            db.execute("UPDATE analyses SET digest = ? WHERE id = ?", (json.dumps(old), a["id"]))
    assert [summary_of(d) for d in jobs.digests(job_id)] == [summary_row(a) for a in analyses]
    with jobs.store.connect() as db:
        stored = [json.loads(d) for (d,) in db.execute("SELECT digest FROM analyses ORDER BY rowid")]
    assert all(is_current(d) and d["kl_gini"] is not None for d in stored)


def test_summaries_and_figures_never_parse_the_analyses(jobs, monkeypatch):
    job_id = synthetic_job(jobs, lines=5, tokens=40, top_k=3, reference_answer="42")
    expected = [summary_row(a) for a in jobs.analyses(job_id)]

    def no_parsing(data: bytes) -> bytes:
        raise AssertionError("an analysis was parsed")

    monkeypatch.setattr(store_module.zlib, "decompress", no_parsing)
    assert [summary_of(d) for d in jobs.digests(job_id)] == expected
    figures = figures_of(jobs.digests(job_id))
    assert {t["name"] for t in figures["agreement"]["data"]} <= {
        "correct (5)",
        "incorrect (5)",
        "correct (0)",
        "incorrect (0)",
    }


def traced_peak(fn) -> tuple[object, int]:
    """What `fn()` returns, and the most memory Python held while it ran (bytes)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_exports_of_a_job_hold_at_most_one_analysis_in_memory(jobs):
    """Summaries hold none of the analyses, steps one (and a row group) at a time: whatever the
    number of lines, never all of them (here 8 times one)."""
    job_id = synthetic_job(jobs, lines=8, tokens=400)
    first = jobs.items(job_id)[0]["analysis_id"]
    _, one = traced_peak(lambda: jobs.store.get(first))

    def summaries() -> int:
        rows = (summary_of(d) for d in jobs.digests(job_id))
        return sum(len(piece) for piece in summaries_csv_chunks(rows))

    csv_bytes, summaries_peak = traced_peak(summaries)
    parquet, steps_peak = traced_peak(
        lambda: b"".join(steps_parquet_chunks(jobs.each_analysis(job_id), group_rows=1000))
    )
    assert csv_bytes > 1000 and summaries_peak < one / 4, (summaries_peak, one)
    assert steps_peak < 3 * one, (steps_peak, one)
    table = pq.ParquetFile(io.BytesIO(parquet))
    assert table.metadata.num_rows == 8 * 400 and table.metadata.num_row_groups >= 3


def test_steps_parquet_in_row_groups_equals_the_whole_table(jobs):
    job_id = synthetic_job(jobs, lines=7, tokens=25, top_k=2, trajectory_id="t")
    analyses = jobs.analyses(job_id)
    pieces = list(steps_parquet_chunks(jobs.each_analysis(job_id), group_rows=40))
    assert len(pieces) > 3  # sent as it is written
    got = pd.read_parquet(io.BytesIO(b"".join(pieces)))
    want = pd.read_parquet(io.BytesIO(steps_parquet(step_rows(analyses))))  # the table in one piece
    pd.testing.assert_frame_equal(got, want)
    assert len(got) == 7 * 25 and list(got.columns) == list(step_rows(analyses)[0])
    empty = pd.read_parquet(io.BytesIO(b"".join(steps_parquet_chunks([]))))
    assert empty.empty and "reverse_kl" in empty.columns


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted():
    rows = []
    for n, text in enumerate(["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain", "-"]):
        row = dict.fromkeys(SUMMARY_COLUMNS, None)
        row.update(analysis_id=f"a{n}", trajectory_id=text, preview=text, advantage_total=-0.5, tokens=3)
        rows.append(row)
    table = list(csv.DictReader(io.StringIO("".join(summaries_csv_chunks(rows)), newline="")))
    quoted = ["'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "plain", "'-"]
    assert [r["trajectory_id"] for r in table] == quoted and [r["preview"] for r in table] == quoted
    assert {(r["advantage_total"], r["tokens"]) for r in table} == {("-0.5", "3")}  # numbers stay numbers


def test_a_job_deleted_while_it_runs_stores_nothing_more(jobs):
    job_id = jobs.create("x.jsonl", {}, [(1, {}), (2, {})], [])
    analysis = synthetic_analysis(5, top_k=1, job={"id": job_id, "line": 1})
    jobs.complete(job_id, [(1, analysis)])
    assert jobs.delete(job_id) == 1
    late = synthetic_analysis(5, top_k=1, seed=2, job={"id": job_id, "line": 2})
    jobs.complete(job_id, [(2, late)])  # the batch that was running when it was deleted
    with jobs.store.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM analyses").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM job_items").fetchone()[0] == 0
    with pytest.raises(NotFound):
        jobs.get(job_id)
    with pytest.raises(NotFound):
        jobs.delete(job_id)


def test_deleting_an_analysis_of_a_job_leaves_the_line_saying_so(jobs):
    job_id = synthetic_job(jobs, lines=3, tokens=5, top_k=1)
    items = jobs.items(job_id)
    jobs.delete_analysis(items[1]["analysis_id"])
    after = jobs.items(job_id)
    assert after[1]["analysis_id"] is None and after[1]["error"] == "its analysis was deleted"
    assert [d["line"] for d in jobs.digests(job_id)] == [1, 3]
    with pytest.raises(NotFound):
        jobs.delete_analysis(items[1]["analysis_id"])


def backdate(jobs: Jobs, days: float) -> None:
    """Everything stored so far, as if it were `days` old."""
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).isoformat(timespec="microseconds")
    with jobs.store.connect() as db:
        db.execute("UPDATE analyses SET created_at = ?", (old,))
        db.execute("UPDATE jobs SET created_at = ?, finished_at = ?", (old, old))


def test_retention_deletes_old_analyses_and_finished_jobs_only(jobs):
    old_single = synthetic_analysis(5, top_k=1)
    jobs.store.save(old_single)
    synthetic_job(jobs, lines=2, tokens=5, top_k=1)
    running = jobs.create("r.jsonl", {}, [(1, {}), (2, {})], [])
    jobs.complete(running, [(1, synthetic_analysis(5, top_k=1, job={"id": running, "line": 1}))])
    jobs.set_state(running, "running")
    backdate(jobs, 10)
    new_single = synthetic_analysis(5, top_k=1, seed=3)
    jobs.store.save(new_single)
    assert purge_older_than(jobs, 7) == (3, 1)  # the old single analysis, the old job and its 2
    assert [j["id"] for j in jobs.list()] == [running]
    assert jobs.store.list()[1] == 2  # the running job's analysis and the new one
    assert jobs.store.get(new_single["id"])["id"] == new_single["id"]
    assert purge_older_than(jobs, 7) == (0, 0)
