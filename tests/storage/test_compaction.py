"""Deleted rows give their space back (issue #24, "Also"): SQLite only reuses the pages of
deleted rows, so a database never shrank after deletions or retention. A new database is made
with auto_vacuum=INCREMENTAL and `Store.compact` (run by each retention sweep, retention or not)
frees the pages; a database made before is converted by its first compaction."""

from __future__ import annotations

import datetime as dt
import sqlite3
from contextlib import closing
from pathlib import Path

from support.synthetic import synthetic_analysis, synthetic_job
from vrollout.storage.jobs import Jobs
from vrollout.storage.retention import sweep
from vrollout.storage.store import Store


def on_disk(path: Path) -> int:
    """The database's bytes, its write-ahead log included."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if not p.name.endswith("-shm"))


def checkpointed(store: Store) -> int:
    with store.connect() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return on_disk(store.path)


def fill(jobs: Jobs) -> str:
    """A finished job of 40 analyses (a few MB): its id."""
    return synthetic_job(jobs, lines=40, tokens=200, top_k=5)


def test_deleting_a_job_then_compacting_shrinks_the_file(tmp_path):
    jobs = Jobs(Store(tmp_path / "db.sqlite3"))
    empty = checkpointed(jobs.store)
    job_id = fill(jobs)
    full = checkpointed(jobs.store)
    assert full > empty + 500_000
    jobs.delete(job_id)
    assert checkpointed(jobs.store) >= full  # deleting alone gives nothing back
    freed = jobs.store.compact()
    assert freed > (full - empty) // 2
    assert on_disk(jobs.store.path) < empty + (full - empty) // 4
    assert jobs.store.compact() == 0  # nothing more to free


def test_a_database_made_before_is_converted_by_its_first_compaction(tmp_path):
    path = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(path)) as db:  # tables made before the pragma: an older version's
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE earlier (x INTEGER)")
    jobs = Jobs(Store(path))
    with jobs.store.connect() as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # NONE: set too late
    job_id = fill(jobs)
    full = checkpointed(jobs.store)
    jobs.delete(job_id)
    assert jobs.store.compact() > 0
    assert on_disk(path) < full // 2
    with jobs.store.connect() as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on


def test_a_retention_sweep_compacts_with_or_without_retention(tmp_path):
    jobs = Jobs(Store(tmp_path / "db.sqlite3"))
    empty = checkpointed(jobs.store)
    for seed in range(30):
        jobs.store.save(synthetic_analysis(200, top_k=5, seed=seed))
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)).isoformat(timespec="microseconds")
    with jobs.store.connect() as db:
        db.execute("UPDATE analyses SET created_at = ?", (old,))
    full = checkpointed(jobs.store)
    analyses, finished, freed = sweep(jobs, 7)
    assert (analyses, finished) == (30, 0) and freed > (full - empty) // 2
    assert on_disk(jobs.store.path) < empty + (full - empty) // 4
    job_id = fill(jobs)
    jobs.delete(job_id)  # a DELETE request's rows: the next sweep gives them back
    assert sweep(jobs, None)[2] > 0
