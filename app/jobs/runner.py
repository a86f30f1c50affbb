"""The job runner: works through queued jobs in the background, resumable.

A job's pending lines go through the pipeline of files of lines (`pipeline.lines.run_lines`:
windows, prepare, planned batches, line order) on a thread of their own; each window's
preparation and each group's model work wait their turn on the shared model worker, in its jobs
lane, so interactive requests take turns with a job's groups. Each group is stored as it finishes
(`storage.jobs.Jobs.complete`: one transaction). One job's failure, whatever it is, never stops
the runner: the job stops with its reason and its pending lines kept, and the next one runs. No
HTTP here; the tables are in `storage.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from vrollout.errors import Cancelled, NotFound, StorageError, VRError
from vrollout.jobs.pedagogical import PreparedLine, prepare_line, run_lines
from vrollout.jobs.progress import JobFeed
from vrollout.jobs.worker import ModelWorker
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.lines import run_lines as each_line
from vrollout.pipeline.replay import Progress
from vrollout.storage.jobs import Jobs
from vrollout.storage.store import storage_error

log = logging.getLogger(__name__)
INTERNAL = "internal error"  # a line's error where a bug, not the line, is at fault


class JobStopped(Exception):
    """The job was cancelled (or deleted) while it ran: its pending lines stay pending."""


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
        self.live_lock = threading.Lock()  # vLLM: lines finish on several threads
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
        """Never ends by itself: a job that cannot go on (its results cannot be stored, or a bug)
        stops, with its reason and its pending lines kept, and the runner waits for the next one."""
        while True:
            try:
                job_id = await asyncio.to_thread(self.jobs.next_queued)
            except (StorageError, sqlite3.Error):
                log.exception("cannot read the job queue; trying again in 5 s")
                await asyncio.sleep(5)
                continue
            if job_id is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                await self.run_job(job_id)
            except Cancelled:
                if self.worker.closed:  # the server is stopping: the job resumes on restart
                    return
                await self._stop(job_id, "the job was cancelled by an internal error")
            except (StorageError, sqlite3.Error) as exc:
                error = (
                    exc if isinstance(exc, StorageError) else storage_error(exc, "could not store results")
                )
                log.error("job %s stopped: %s", job_id, error.message)
                await self._stop(job_id, error.message)
            except Exception:  # a bug: logged, the job stops, the runner goes on
                log.exception("job %s stopped by an internal error", job_id)
                await self._stop(job_id, INTERNAL)

    async def _stop(self, job_id: str, why: str) -> None:
        """A job that cannot go on: cancelled with its reason (`state()`'s `error`), its pending
        lines kept for a resume. A job deleted meanwhile is left alone."""
        self.stopped[job_id] = f"stopped: {why}; resume the job once it is fixed"
        self.cancel_requested.discard(job_id)
        try:
            state = (await asyncio.to_thread(self.jobs.get, job_id))["state"]
        except NotFound:  # deleted meanwhile: nothing to say
            self.stopped.pop(job_id, None)
            return
        except (StorageError, sqlite3.Error):
            return  # still "running": resumed on restart
        if state in ("queued", "running"):  # not queued again: the next job runs
            with contextlib.suppress(StorageError, sqlite3.Error):
                await asyncio.to_thread(self.jobs.set_state, job_id, "cancelled")

    async def run_job(self, job_id: str) -> None:
        """The job's pending lines, on a thread of its own (`_run_job`)."""
        await asyncio.to_thread(self._run_job, job_id)

    def _run_job(self, job_id: str) -> None:
        """The pending lines through `pipeline.lines.run_lines`: a window at a time, prepared and
        run on the model worker, each group stored as it finishes and each line's error recorded.
        Cancel takes effect between groups (a pedagogical line: at its next step). A job deleted
        before it starts is skipped."""
        self.jobs.set_state(job_id, "running")
        live = self.live[job_id] = Live()
        pending = self.jobs.pending(job_id)
        try:
            options = self.jobs.get(job_id)["options"]
        except NotFound:  # deleted as it started
            log.info("job %s was deleted before it ran", job_id)
            self.live.pop(job_id, None)
            self.cancel_requested.discard(job_id)
            return

        def prepare(window: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
            return self.worker.call(self._prepare, window, options, lane="jobs")

        run = partial(self._groups, job_id, options.get("mode") == "pedagogical", live)
        try:
            for line, result in each_line(pending, prepare, run):
                if isinstance(result, VRError):
                    self.jobs.fail(job_id, line, result.message)
        except JobStopped:
            self.cancel_requested.discard(job_id)
            self.jobs.set_state(job_id, "cancelled")
            return
        cancelled = job_id in self.cancel_requested  # e.g. a pedagogical group stopped mid-rollout
        self.cancel_requested.discard(job_id)
        self.jobs.set_state(job_id, "cancelled" if cancelled else "done")

    def _prepare(self, lines: list[tuple[int, Any]], options: dict[str, Any]) -> list[tuple[int, Any]]:
        """Validate each stored line again (settings may have changed since the upload): a
        `Prepared` analysis, or for a pedagogical job a `PreparedLine` (`jobs.pedagogical`), or
        the line's error."""
        pedagogical = options.get("mode") == "pedagogical"
        out: list[tuple[int, Any]] = []
        for line, payload in lines:
            try:
                if pedagogical:
                    out.append((line, prepare_line(self.analyzer, payload, options)))
                else:
                    out.append((line, self.analyzer.prepare(payload)))
            except VRError as exc:
                out.append((line, exc))
        return out

    def _groups(
        self, job_id: str, pedagogical: bool, live: Live, prepared: list[tuple[int, Any]]
    ) -> Iterator[list[tuple[int, Any]]]:
        """`run` for `run_lines`: a window's prepared lines in groups, each stored as it finishes;
        `JobStopped` once the job is cancelled. Padded batches of similar lengths (analyses), or
        VROLLOUT_PEDAGOGICAL_BATCH lines whose rollouts decode together; on vLLM, lines at once."""
        if self.lines_pool is not None:  # vLLM: lines at once across the replicas

            def one(item: tuple[int, Any]) -> list[tuple[int, Any]]:
                return [] if job_id in self.cancel_requested else self._run_group(job_id, [item], live)

            yield from self.lines_pool.map(one, prepared)  # lines in flight finish and are kept
            if job_id in self.cancel_requested:
                raise JobStopped
            return
        if pedagogical:
            size = self.analyzer.settings.pedagogical_batch
            groups = [prepared[i : i + size] for i in range(0, len(prepared), size)]
        else:
            groups = self.analyzer.plan_batches(prepared)
        for group in groups:
            if job_id in self.cancel_requested:
                raise JobStopped
            yield self._run_group(job_id, group, live)

    def _checkpoint(self, job_id: str) -> Progress:
        """Progress for a pedagogical line: a cancel (or delete) of the job stops it at the next
        step boundary, and the line stays pending (a resume runs it whole)."""

        def progress(stage: str, done: int, total: int) -> None:
            if job_id in self.cancel_requested:
                raise Cancelled("the job was cancelled")

        return progress

    def _run_group(self, job_id: str, group: list[tuple[int, Any]], live: Live) -> list[tuple[int, Any]]:
        """A group run and its analyses (and rollout records) stored: each line's analysis or
        error; none for lines stopped mid-way by a cancel (they stay pending). A storage failure
        raises (nothing of the group was stored: the job stops, see `run_forever`)."""
        extras = [{"job": {"id": job_id, "line": line}} for line, _ in group]
        lines = [line for line, _ in group]
        pedagogical = isinstance(group[0][1], PreparedLine)
        fn: Any = self.analyzer.run_group
        if pedagogical:
            fn = partial(run_lines, self.analyzer, progress=self._checkpoint(job_id))
        try:
            if self.lines_pool is not None:  # on a line thread already: the servers do the model work
                results = fn(group, extras)
            else:
                results = self.worker.call(fn, group, extras, lane="jobs")
            done = [(n, r) for n, r in zip(lines, results, strict=True) if not isinstance(r, VRError)]
            records = None
            tokens = 0
            if pedagogical:  # (analysis, rollout record) per line
                records = {n: record for n, (_, record) in done}
                done = [(n, analysis) for n, (analysis, _) in done]
                tokens += sum(len(r["pedagogical"]["response_ids"]) for r in records.values())
            self.jobs.complete(job_id, done, records)
            tokens += sum(a["summary"]["tokens"] for _, a in done)
            outcomes = list(zip(lines, results, strict=True))
        except (StorageError, sqlite3.Error):
            raise
        except Cancelled:
            if self.worker.closed:
                raise  # the server is stopping
            return []  # stopped mid-line: nothing of it stored, the line stays pending
        except Exception:  # a bug: logged; the lines say so and the job goes on
            log.exception("job %s lines %s failed", job_id, lines)
            outcomes, tokens = [(line, VRError(INTERNAL)) for line in lines], 0
        with self.live_lock:
            live.tokens += tokens
            live.lines += len(group)
        self.feed.changed(job_id)  # the rate and time left moved too
        return outcomes
