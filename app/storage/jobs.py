"""Batch jobs: many trajectories from one upload, analysed in the background, resumable.

Jobs and their lines live in the same SQLite file as the analyses. A line's analysis is
inserted and the line marked done in one transaction, so a server that stops mid-job loses
nothing and, on restart, resumes with exactly the lines not yet done. No HTTP here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vrollout.core.errors import NotFound, StorageError, VRError
from vrollout.core.ids import new_id, now
from vrollout.service import Analyzer, ModelWorker, Prepared
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
    finished_at TEXT
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
"""
FINAL = ("done", "cancelled")
WINDOW = 64  # lines prepared (and sorted into batches) at a time


class Jobs:
    """Persistence of jobs and their lines."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.connect() as db:
            db.executescript(SCHEMA)
            # A job that was running when the server stopped resumes with its pending lines.
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    def create(
        self,
        name: str,
        options: dict[str, Any],
        items: list[tuple[int, dict[str, Any]]],
        rejected: list[dict[str, Any]],
    ) -> str:
        job_id = new_id()
        with self.store.connect() as db:
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, 'queued', ?, ?, ?, NULL, NULL)",
                (job_id, now(), name, json.dumps(options), len(items), json.dumps(rejected)),
            )
            db.executemany(
                "INSERT INTO job_items VALUES (?, ?, ?, 'pending', NULL, NULL, NULL)",
                [(job_id, line, json.dumps(obj)) for line, obj in items],
            )
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        with self.store.connect() as db:
            row = db.execute(
                "SELECT id, created_at, name, state, options, total, rejected, started_at, finished_at "
                "FROM jobs WHERE id = ?",
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
        )
        job = dict(zip(keys, row, strict=True))
        job["options"], job["rejected"] = json.loads(job["options"]), json.loads(job["rejected"])
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

    def set_state(self, job_id: str, state: str) -> None:
        column = {"running": "started_at", "done": "finished_at", "cancelled": "finished_at"}.get(state)
        with self.store.connect() as db:
            if column:
                db.execute(f"UPDATE jobs SET state = ?, {column} = ? WHERE id = ?", (state, now(), job_id))
            else:
                db.execute("UPDATE jobs SET state = ? WHERE id = ?", (state, job_id))

    def pending(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT line, payload FROM job_items WHERE job_id = ? AND state = 'pending' ORDER BY line",
                (job_id,),
            ).fetchall()
        return [(line, json.loads(payload)) for line, payload in rows]

    def complete(self, job_id: str, done: list[tuple[int, dict[str, Any]]]) -> None:
        """Store the analyses and mark their lines done: one transaction, so never half of it."""
        with self.store.connect() as db:
            for line, analysis in done:
                self.store.insert(db, analysis)
                db.execute(
                    "UPDATE job_items SET state = 'done', analysis_id = ?, tokens = ? "
                    "WHERE job_id = ? AND line = ?",
                    (analysis["id"], analysis["summary"]["tokens"], job_id, line),
                )

    def fail(self, job_id: str, line: int, error: str) -> None:
        with self.store.connect() as db:
            db.execute(
                "UPDATE job_items SET state = 'error', error = ? WHERE job_id = ? AND line = ?",
                (error, job_id, line),
            )

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
        ids = [i["analysis_id"] for i in self.items(job_id) if i["analysis_id"]]
        return self.store.get_many(ids)


@dataclass
class Live:
    """Throughput of the current run of a job (not persisted: it restarts with the server)."""

    started: float = field(default_factory=time.monotonic)
    since: float = field(default_factory=time.time)  # wall clock, for the replica errors of this run
    tokens: int = 0
    lines: int = 0


class JobRunner:
    """Works through queued jobs, one line at a time on the shared model worker."""

    def __init__(self, jobs: Jobs, analyzer: Analyzer, worker: ModelWorker) -> None:
        self.jobs, self.analyzer, self.worker = jobs, analyzer, worker
        self.wake = asyncio.Event()
        self.cancel_requested: set[str] = set()
        self.live: dict[str, Live] = {}
        self.stopped: dict[str, str] = {}  # job id -> why it stopped by itself (e.g. the disk is full)
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
        for w in range(0, len(pending), WINDOW):
            prepared = await self.worker.run(self._prepare, job_id, pending[w : w + WINDOW])
            if self.lines_pool is not None:
                if not await self._run_concurrently(job_id, prepared, live):
                    return
                continue
            for group in self.analyzer.plan_batches(prepared):
                if job_id in self.cancel_requested:
                    self.cancel_requested.discard(job_id)
                    self.jobs.set_state(job_id, "cancelled")
                    return
                await self._run_group(job_id, group, live)
        self.cancel_requested.discard(job_id)
        self.jobs.set_state(job_id, "done")

    def _prepare(self, job_id: str, lines: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, Prepared]]:
        """Validate each line again (settings may have changed since the upload)."""
        out = []
        for line, payload in lines:
            try:
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

    async def _run_group(self, job_id: str, group: list[tuple[int, Prepared]], live: Live) -> None:
        extras = [{"job": {"id": job_id, "line": line}} for line, _ in group]
        try:
            if self.lines_pool is not None:
                run = asyncio.get_running_loop().run_in_executor
                results = await run(self.lines_pool, self.analyzer.run_group, group, extras)
            else:
                results = await self.worker.run(self.analyzer.run_group, group, extras)
            lines = [line for line, _ in group]
            done = [(n, r) for n, r in zip(lines, results, strict=True) if not isinstance(r, VRError)]
            await asyncio.to_thread(self.jobs.complete, job_id, done)
            live.tokens += sum(a["summary"]["tokens"] for _, a in done)
            for n, r in zip(lines, results, strict=True):
                if isinstance(r, VRError):
                    await asyncio.to_thread(self.jobs.fail, job_id, n, r.message)
        except (StorageError, sqlite3.Error):
            raise  # nothing of the group was stored: the job stops (see run_forever)
        except Exception:  # a bug: logged; the line says so and the job goes on
            log.exception("job %s lines %s failed", job_id, [line for line, _ in group])
            for line, _ in group:
                await asyncio.to_thread(self.jobs.fail, job_id, line, "internal error")
        live.lines += len(group)
