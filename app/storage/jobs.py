"""The job tables: jobs, their lines and a pedagogical job's rollout records, in the same SQLite
file as the analyses. A line's analysis is inserted and the line marked done in one transaction,
so a server that stops mid-job loses nothing and, on restart, resumes with exactly the lines not
yet done. Exports read the stored digests (and full analyses one at a time), a chunk per
connection, never all at once. Only SQL here: the job runner is `jobs.runner`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from vrollout.errors import NotFound
from vrollout.ids import new_id, now
from vrollout.pipeline.digest import is_current
from vrollout.storage.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,          -- queued | running | done | cancelled
    options TEXT NOT NULL,
    total INTEGER NOT NULL,
    rejected TEXT NOT NULL,       -- [{"line", "error"}] found at upload
    started_at TEXT,
    finished_at TEXT,
    warnings TEXT NOT NULL DEFAULT '[]'  -- [{"key", "warning", "lines", "count"}]: unknown keys
);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,          -- pending | done | error
    analysis_id TEXT,
    tokens INTEGER,
    error TEXT,
    PRIMARY KEY (job_id, line)
);
CREATE INDEX IF NOT EXISTS job_items_analysis ON job_items (analysis_id);
CREATE TABLE IF NOT EXISTS job_rollouts (  -- pedagogical jobs: a line's rollout record
    job_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    record TEXT NOT NULL,         -- JSON (docs/formats.md, "Rollout records")
    PRIMARY KEY (job_id, line)
);
"""
FINAL = ("done", "cancelled")
CHUNK = 500  # lines read per connection by exports
ANALYSIS_DELETED = "its analysis was deleted"


class Jobs:
    """Persistence of jobs and their lines."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: list[Callable[[str], None]] = []  # told the id of each job that changes
        with store.connect() as db:
            db.executescript(SCHEMA)
            if "warnings" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
                db.execute("ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'")  # older files
            # A job that was running when the server stopped resumes with its pending lines.
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    def create(
        self,
        name: str,
        options: dict[str, Any],
        items: list[tuple[int, dict[str, Any] | str]],
        rejected: list[dict[str, Any]],
        warnings: list[dict[str, Any]] | None = None,
    ) -> str:
        job_id = new_id()
        found = json.dumps(rejected), json.dumps(warnings or [])
        row = (job_id, now(), name, json.dumps(options), len(items), *found)
        with self.store.connect() as db:
            db.execute(
                "INSERT INTO jobs (id, created_at, name, state, options, total, rejected, warnings) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                row,
            )
            db.executemany(
                "INSERT INTO job_items VALUES (?, ?, ?, 'pending', NULL, NULL, NULL)",
                # a line as text is its JSON already (an upload keeps its lines so: smaller)
                [(job_id, line, obj if isinstance(obj, str) else json.dumps(obj)) for line, obj in items],
            )
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        with self.store.connect() as db:
            row = db.execute(
                "SELECT id, created_at, name, state, options, total, rejected, started_at, finished_at, "
                "warnings FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            counts = dict(
                db.execute(
                    "SELECT state, COUNT(*) FROM job_items WHERE job_id = ? GROUP BY state", (job_id,)
                ).fetchall()
            )
            tokens = db.execute(
                "SELECT COALESCE(SUM(tokens), 0) FROM job_items WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
        keys = (
            "id",
            "created_at",
            "name",
            "state",
            "options",
            "total",
            "rejected",
            "started_at",
            "finished_at",
            "warnings",
        )
        job = dict(zip(keys, row, strict=True))
        for key in ("options", "rejected", "warnings"):
            job[key] = json.loads(job[key])
        job["mode"] = job["options"].get("mode", "analysis")
        job.update(
            done=counts.get("done", 0),
            failed=counts.get("error", 0),
            pending=counts.get("pending", 0),
            tokens_done=tokens,
        )
        return job

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.store.connect() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))]
        return [self.get(i) for i in ids]

    def next_queued(self) -> str | None:
        with self.store.connect() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def changed(self, job_id: str) -> None:
        for listener in self.listeners:
            listener(job_id)

    def set_state(self, job_id: str, state: str) -> None:
        column = {"running": "started_at", "done": "finished_at", "cancelled": "finished_at"}.get(state)
        with self.store.connect() as db:
            if column:
                db.execute(f"UPDATE jobs SET state = ?, {column} = ? WHERE id = ?", (state, now(), job_id))
            else:
                db.execute("UPDATE jobs SET state = ? WHERE id = ?", (state, job_id))
        self.changed(job_id)

    def pending(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT line, payload FROM job_items WHERE job_id = ? AND state = 'pending' ORDER BY line",
                (job_id,),
            ).fetchall()
        return [(line, json.loads(payload)) for line, payload in rows]

    def complete(
        self,
        job_id: str,
        done: list[tuple[int, dict[str, Any]]],
        rollouts: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        """Store the analyses (and a pedagogical job's rollout records, by line) and mark their
        lines done: one transaction, so never half of it. Nothing is stored for a job deleted
        meanwhile (the check and the writes are one transaction too: `BEGIN IMMEDIATE` takes the
        write lock before the check)."""
        with self.store.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                return
            for line, analysis in done:
                self.store.insert(db, analysis)
                db.execute(
                    "UPDATE job_items SET state = 'done', analysis_id = ?, tokens = ? "
                    "WHERE job_id = ? AND line = ?",
                    (analysis["id"], analysis["summary"]["tokens"], job_id, line),
                )
                if rollouts is not None and line in rollouts:
                    db.execute(
                        "INSERT OR REPLACE INTO job_rollouts VALUES (?, ?, ?)",
                        (job_id, line, json.dumps(rollouts[line])),
                    )
        self.changed(job_id)

    def fail(self, job_id: str, line: int, error: str) -> None:
        with self.store.connect() as db:
            db.execute(
                "UPDATE job_items SET state = 'error', error = ? WHERE job_id = ? AND line = ?",
                (error, job_id, line),
            )
        self.changed(job_id)

    def has_localization_lines(self, job_id: str) -> bool:
        """Whether any line of the job is in ProcessBench's shape (its `meta` keeps `steps`, as
        `metrics.localization.localization_line` leaves it): only then has the job a localization table."""
        with self.store.connect() as db:
            row = db.execute(
                "SELECT 1 FROM job_items WHERE job_id = ? "
                "AND json_extract(payload, '$.meta.steps') IS NOT NULL LIMIT 1",
                (job_id,),
            ).fetchone()
        return row is not None

    def models(self, job_id: str) -> list[dict[str, Any]]:
        """The student and teacher of the job's analyses, with how many each pair made (one
        pair, unless the job was resumed by a server with other models)."""
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT a.student, a.teacher, COUNT(*) FROM job_items i "
                "JOIN analyses a ON a.id = i.analysis_id WHERE i.job_id = ? "
                "GROUP BY a.student, a.teacher ORDER BY COUNT(*) DESC",
                (job_id,),
            ).fetchall()
        return [{"student": r[0], "teacher": r[1], "trajectories": r[2]} for r in rows]

    def lines_of(self, analysis_ids: list[str]) -> dict[str, dict[str, Any]]:
        """For each analysis made by a job: its job's id and name and its line (/analyses)."""
        if not analysis_ids:
            return {}
        marks = ",".join("?" * len(analysis_ids))
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT i.analysis_id, i.job_id, j.name, i.line FROM job_items i "
                f"JOIN jobs j ON j.id = i.job_id WHERE i.analysis_id IN ({marks})",
                analysis_ids,
            ).fetchall()
        return {r[0]: {"job_id": r[1], "job_name": r[2], "line": r[3]} for r in rows}

    def items(self, job_id: str) -> list[dict[str, Any]]:
        """Every line: state, analysis id or error."""
        self.get(job_id)  # 404 for an unknown job
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT line, state, analysis_id, error FROM job_items WHERE job_id = ? ORDER BY line",
                (job_id,),
            ).fetchall()
        return [{"line": r[0], "state": r[1], "analysis_id": r[2], "error": r[3]} for r in rows]

    def analyses(self, job_id: str) -> list[dict[str, Any]]:
        """Every analysis of the job, all in memory: for small jobs (tests, benchmarks)."""
        return list(self.each_analysis(job_id))

    def _analysis_ids(self, job_id: str) -> Iterator[list[tuple[int, str, str | None]]]:
        """(line, analysis id, stored digest) of the job's analyses in line order, a chunk per
        connection (none stays open while the caller works on a chunk)."""
        yield from self._pages(
            job_id,
            "SELECT i.line, a.id, a.digest FROM job_items i JOIN analyses a ON a.id = i.analysis_id "
            "WHERE i.job_id = ? AND i.line > ? ORDER BY i.line LIMIT ?",
        )

    def _pages(self, job_id: str, sql: str) -> Iterator[list[Any]]:
        """A job's rows by line (`sql` selects the line first, takes job id, last line, limit),
        CHUNK at a time, a connection per chunk (none stays open while the caller works)."""
        self.get(job_id)  # 404 for an unknown job
        last = -1
        while True:
            with self.store.connect() as db:
                rows = db.execute(sql, (job_id, last, CHUNK)).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def digests(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The digest (`pipeline.digest.digest`) of each analysis of the job, in line order."""
        for rows in self._analysis_ids(job_id):
            for _, analysis_id, stored in rows:
                found = json.loads(stored) if stored else None
                if not is_current(found):  # none yet, or an older version's: made from the analysis
                    found = self.store.digest_of(analysis_id)
                if found is not None:
                    yield found

    def each_analysis(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Every analysis of the job in line order, one parsed at a time."""
        for rows in self._analysis_ids(job_id):
            yield from self.store.each([analysis_id for _, analysis_id, _ in rows])

    def rollouts(self, job_id: str) -> Iterator[dict[str, Any]]:
        """A pedagogical job's rollout records in line order, a chunk per connection (none
        stays open while the caller works on a chunk); none for an analysis job."""
        sql = "SELECT line, record FROM job_rollouts WHERE job_id = ? AND line > ? ORDER BY line LIMIT ?"
        for rows in self._pages(job_id, sql):
            for _, record in rows:
                yield json.loads(record)

    def rollout(self, job_id: str, line: int) -> dict[str, Any] | None:
        """One line's rollout record (None: the line has none, or the job is in analysis mode;
        404 for an unknown job)."""
        self.get(job_id)
        with self.store.connect() as db:
            row = db.execute(
                "SELECT record FROM job_rollouts WHERE job_id = ? AND line = ?", (job_id, line)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def delete(self, job_id: str) -> int:
        """The job, its lines and their analyses, in one transaction. Returns the number of
        analyses deleted. (A running job must be stopped first: `JobRunner.delete`.)"""
        with self.store.connect() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFound(f"no job with id {job_id!r}")
            deleted = self._delete_jobs(db, [job_id])
        self.changed(job_id)
        return deleted

    @staticmethod
    def _delete_jobs(db: Any, job_ids: list[str]) -> int:
        deleted = 0
        for job_id in job_ids:
            deleted += db.execute(
                "DELETE FROM analyses WHERE id IN (SELECT analysis_id FROM job_items WHERE job_id = ?)",
                (job_id,),
            ).rowcount
            db.execute("DELETE FROM job_items WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_rollouts WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return deleted

    def delete_analysis(self, analysis_id: str) -> None:
        """One analysis; a job's line that held it stays done and says its analysis was deleted
        (the job's exports no longer list it)."""
        with self.store.connect() as db:
            if db.execute("DELETE FROM analyses WHERE id = ?", (analysis_id,)).rowcount == 0:
                raise NotFound(f"no stored analysis with id {analysis_id!r}")
            jobs = [
                r[0] for r in db.execute("SELECT job_id FROM job_items WHERE analysis_id = ?", (analysis_id,))
            ]
            db.execute(
                "UPDATE job_items SET analysis_id = NULL, error = ? WHERE analysis_id = ?",
                (ANALYSIS_DELETED, analysis_id),
            )
        for job_id in jobs:
            self.changed(job_id)

    def purge(self, before: str) -> tuple[int, int]:
        """Retention: finished jobs (done or cancelled) that finished before `before` (an ISO
        time, as `now()` writes them), with their analyses, and the analyses of no job created
        before it. Jobs still queued or running keep everything. Returns (analyses, jobs)."""
        with self.store.connect() as db:
            old_jobs = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE state IN ('done', 'cancelled') "
                    "AND COALESCE(finished_at, created_at) < ?",
                    (before,),
                )
            ]
            deleted = self._delete_jobs(db, old_jobs)
            deleted += db.execute(
                "DELETE FROM analyses WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM job_items WHERE job_items.analysis_id = analyses.id)",
                (before,),
            ).rowcount
        for job_id in old_jobs:
            self.changed(job_id)
        return deleted, len(old_jobs)
