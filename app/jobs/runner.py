"""Batch jobs: many trajectories from one upload, analysed in the background, resumable.

Jobs and their lines live in the same SQLite file as the analyses. A line's analysis is
inserted and the line marked done in one transaction, so a server that stops mid-job loses
nothing and, on restart, resumes with exactly the lines not yet done. Exports read the
stored digests (and full analyses one at a time), a chunk per connection, never all at once.
No HTTP here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from vrollout.errors import Cancelled, NotFound, StorageError, VRError
from vrollout.ids import new_id, now
from vrollout.jobs.pedagogical import PreparedLine, prepare_line, run_lines
from vrollout.jobs.progress import JobFeed
from vrollout.jobs.worker import ModelWorker
from vrollout.pipeline.analyzer import Analyzer, Prepared
from vrollout.pipeline.replay import Progress
from vrollout.report.dataset import is_current
from vrollout.storage.store import Store, storage_error

log = logging.getLogger(__name__)

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
WINDOW = 64  # lines prepared (and sorted into batches) at a time
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
        items: list[tuple[int, dict[str, Any]]],
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
                [(job_id, line, json.dumps(obj)) for line, obj in items],
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
        `core.localize.localization_line` leaves it): only then has the job a localization table."""
        with self.store.connect() as db:
            row = db.execute(
                "SELECT 1 FROM job_items WHERE job_id = ? "
                "AND json_extract(payload, '$.meta.steps') IS NOT NULL LIMIT 1",
                (job_id,),
            ).fetchone()
        return row is not None

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
        """The digest (`report.dataset.digest`) of each analysis of the job, in line order."""
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


@dataclass
class Live:
    """Throughput of the current run of a job (not persisted: it restarts with the server)."""

    started: float = field(default_factory=time.monotonic)
    since: float = field(default_factory=time.time)  # wall clock, for the replica errors of this run
    tokens: int = 0
    lines: int = 0


class JobRunner:
    """Works through queued jobs, one line (or padded group) at a time on the shared model
    worker, in its jobs lane: interactive requests take turns with the job's groups."""

    def __init__(self, jobs: Jobs, analyzer: Analyzer, worker: ModelWorker) -> None:
        self.jobs, self.analyzer, self.worker = jobs, analyzer, worker
        self.wake = asyncio.Event()
        self.cancel_requested: set[str] = set()
        self.live: dict[str, Live] = {}
        self.stopped: dict[str, str] = {}  # job id -> why it stopped by itself (e.g. the disk is full)
        # Progress streams share one state per job, recomputed when the job changes.
        settings = analyzer.settings
        self.feed = JobFeed(self.state, settings.max_streams_per_job, settings.max_streams)
        jobs.listeners.append(self.feed.changed)
        # On vLLM, lines run concurrently on their own threads (the servers do the model work).
        self.lines_pool: ThreadPoolExecutor | None = None
        if analyzer.backend.remote:
            workers = analyzer.lines_in_flight()
            self.lines_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vrollout-line")

    def state(self, job_id: str) -> dict[str, Any]:
        """The job as stored, plus tokens per second and time left for a running job."""
        job = self.jobs.get(job_id)
        live = self.live.get(job_id)
        rate = eta = None
        if live and live.lines:
            elapsed = max(time.monotonic() - live.started, 1e-6)
            rate = live.tokens / elapsed
            eta = elapsed / live.lines * job["pending"] if job["state"] == "running" else None
        job.update(tokens_per_second=rate, eta_seconds=eta, error=self.stopped.get(job_id))
        job.update(self.analyzer.backend.status(live.since if live else time.time()))  # vLLM: replicas
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job["state"] == "queued":
            self.jobs.set_state(job_id, "cancelled")
        elif job["state"] == "running":
            self.cancel_requested.add(job_id)
        return self.state(job_id)

    def delete(self, job_id: str) -> int:
        """Delete a job with its analyses; a running one is cancelled first (what its current
        batch finishes is not stored: `Jobs.complete` finds the job gone)."""
        if self.jobs.get(job_id)["state"] == "running":
            self.cancel_requested.add(job_id)
        deleted = self.jobs.delete(job_id)
        self.live.pop(job_id, None)
        self.stopped.pop(job_id, None)
        return deleted

    def resume(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job["state"] == "cancelled" and job["pending"]:
            self.stopped.pop(job_id, None)
            self.jobs.set_state(job_id, "queued")
            self.wake.set()
        return self.state(job_id)

    async def run_forever(self) -> None:
        """Never ends by itself: a job that cannot go on (its results cannot be stored) stops,
        with its reason and its pending lines kept, and the runner waits for the next one."""
        while True:
            try:
                job_id = await asyncio.to_thread(self.jobs.next_queued)
            except sqlite3.Error:
                log.exception("cannot read the job queue; trying again in 5 s")
                await asyncio.sleep(5)
                continue
            if job_id is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                await self.run_job(job_id)
            except (StorageError, sqlite3.Error) as exc:
                error = (
                    exc if isinstance(exc, StorageError) else storage_error(exc, "could not store results")
                )
                log.error("job %s stopped: %s", job_id, error.message)
                self.stopped[job_id] = f"stopped: {error.message}; resume the job once it is fixed"
                self.cancel_requested.discard(job_id)
                with contextlib.suppress(sqlite3.Error):  # else still "running": resumed on restart
                    await asyncio.to_thread(self.jobs.set_state, job_id, "cancelled")

    async def run_job(self, job_id: str) -> None:
        """Lines in windows: each window is prepared, its batchable lines go through padded
        batches of similar lengths, the others one by one. Cancel takes effect between batches."""
        self.jobs.set_state(job_id, "running")
        live = self.live[job_id] = Live()
        pending = await asyncio.to_thread(self.jobs.pending, job_id)
        options = (await asyncio.to_thread(self.jobs.get, job_id))["options"]
        for w in range(0, len(pending), WINDOW):
            window = pending[w : w + WINDOW]
            prepared = await self.worker.run(self._prepare, job_id, window, options, lane="jobs")
            if self.lines_pool is not None:  # vLLM: lines at once across the replicas
                if not await self._run_concurrently(job_id, prepared, live):
                    return
                continue
            if options.get("mode") == "pedagogical":  # rollouts of a group decode together
                size = self.analyzer.settings.pedagogical_batch
                groups = [prepared[i : i + size] for i in range(0, len(prepared), size)]
            else:
                groups = self.analyzer.plan_batches(prepared)
            for group in groups:
                if job_id in self.cancel_requested:
                    self.cancel_requested.discard(job_id)
                    self.jobs.set_state(job_id, "cancelled")
                    return
                await self._run_group(job_id, group, live)
        cancelled = job_id in self.cancel_requested  # e.g. a pedagogical group stopped mid-rollout
        self.cancel_requested.discard(job_id)
        self.jobs.set_state(job_id, "cancelled" if cancelled else "done")

    def _prepare(
        self, job_id: str, lines: list[tuple[int, dict[str, Any]]], options: dict[str, Any] | None = None
    ) -> list[tuple[int, Any]]:
        """Validate each line again (settings may have changed since the upload): a `Prepared`
        analysis, or for a pedagogical job a `PreparedLine` (`pedagogy_jobs`)."""
        pedagogical = options is not None and options.get("mode") == "pedagogical"
        out: list[tuple[int, Any]] = []
        for line, payload in lines:
            try:
                if pedagogical:
                    assert options is not None
                    out.append((line, prepare_line(self.analyzer, payload, options)))
                else:
                    out.append((line, self.analyzer.prepare(payload)))
            except VRError as exc:
                self.jobs.fail(job_id, line, exc.message)
        return out

    async def _run_concurrently(self, job_id: str, prepared: list[tuple[int, Prepared]], live: Live) -> bool:
        """vLLM: the window's lines at once, each stored as it finishes. A request that fails
        moves to another replica (`ReplicaPool.post`), so every line is done once. False if
        the job was cancelled (lines already in flight finish and are kept)."""
        gate = asyncio.Semaphore(self.analyzer.lines_in_flight())

        async def one(item: tuple[int, Prepared]) -> None:
            async with gate:
                if job_id not in self.cancel_requested:
                    await self._run_group(job_id, [item], live)

        await asyncio.gather(*(one(item) for item in prepared))
        if job_id in self.cancel_requested:
            self.cancel_requested.discard(job_id)
            self.jobs.set_state(job_id, "cancelled")
            return False
        return True

    def _checkpoint(self, job_id: str) -> Progress:
        """Progress for a pedagogical line: a cancel (or delete) of the job stops it at the next
        step boundary, and the line stays pending (a resume runs it whole)."""

        def progress(stage: str, done: int, total: int) -> None:
            if job_id in self.cancel_requested:
                raise Cancelled("the job was cancelled")

        return progress

    async def _run_group(self, job_id: str, group: list[tuple[int, Any]], live: Live) -> None:
        extras = [{"job": {"id": job_id, "line": line}} for line, _ in group]
        pedagogical = isinstance(group[0][1], PreparedLine)
        fn: Any = self.analyzer.run_group
        if pedagogical:
            fn = partial(run_lines, self.analyzer, progress=self._checkpoint(job_id))
        try:
            if self.lines_pool is not None:
                run = asyncio.get_running_loop().run_in_executor
                results = await run(self.lines_pool, fn, group, extras)
            else:
                results = await self.worker.run(fn, group, extras, lane="jobs")
            lines = [line for line, _ in group]
            done = [(n, r) for n, r in zip(lines, results, strict=True) if not isinstance(r, VRError)]
            records = None
            if pedagogical:  # (analysis, rollout record) per line
                records = {n: record for n, (_, record) in done}
                done = [(n, analysis) for n, (analysis, _) in done]
                live.tokens += sum(len(r["pedagogical"]["response_ids"]) for r in records.values())
            await asyncio.to_thread(self.jobs.complete, job_id, done, records)
            live.tokens += sum(a["summary"]["tokens"] for _, a in done)
            for n, r in zip(lines, results, strict=True):
                if isinstance(r, VRError):
                    await asyncio.to_thread(self.jobs.fail, job_id, n, r.message)
        except (StorageError, sqlite3.Error):
            raise  # nothing of the group was stored: the job stops (see run_forever)
        except Cancelled:
            return  # stopped mid-line: nothing of it stored, the line stays pending
        except Exception:  # a bug: logged; the line says so and the job goes on
            log.exception("job %s lines %s failed", job_id, [line for line, _ in group])
            for line, _ in group:
                await asyncio.to_thread(self.jobs.fail, job_id, line, "internal error")
        live.lines += len(group)
        self.feed.changed(job_id)  # the rate and time left moved too
