"""Job progress shared by every stream that follows a job.

Whatever changes a job says so (`JobFeed.changed`, from any thread); the feed then computes the
job's state once, on a thread, and wakes every stream that follows it. A stream never queries
the database itself, so a hundred streams on one job cost what one does. A job that nobody
follows costs nothing. Streams are capped per job and in total. Knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from vrollout.errors import NotFound, StreamsFull, TooManyStreams, VRError

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    """One followed job: its latest state and who follows it."""

    followers: int = 0
    version: int = 0  # 0: not computed yet
    state: dict[str, Any] | None = None  # None once computed: the job is gone (or unreadable)
    error: VRError | None = None  # why the state could not be computed
    stale: bool = False
    refresher: asyncio.Task[None] | None = None
    # Set (and replaced) at each new version: what the followers wait on.
    bumped: asyncio.Event = field(default_factory=asyncio.Event)


class JobFeed:
    """The latest state of each followed job, computed once per change."""

    def __init__(self, compute: Callable[[str], dict[str, Any]], max_per_job: int, max_total: int) -> None:
        self.compute = compute  # job id -> state; blocking (reads the database), run on a thread
        self.max_per_job, self.max_total = max_per_job, max_total
        self.entries: dict[str, _Entry] = {}
        self.total = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def changed(self, job_id: str) -> None:
        """The job's stored state changed. Safe from any thread; cheap when nobody follows it."""
        loop = self.loop
        if loop is None or job_id not in self.entries:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
            loop.call_soon_threadsafe(self._mark, job_id)

    def _mark(self, job_id: str) -> None:
        entry = self.entries.get(job_id)
        if entry is None:
            return
        entry.stale = True  # changes during a computation are folded into one more
        if entry.refresher is None:
            entry.refresher = asyncio.get_running_loop().create_task(self._refresh(job_id, entry))

    async def _refresh(self, job_id: str, entry: _Entry) -> None:
        try:
            while entry.stale:
                entry.stale = False
                try:
                    entry.state, entry.error = await asyncio.to_thread(self.compute, job_id), None
                except VRError as exc:  # gone (NotFound), or the database failed
                    entry.state, entry.error = None, exc
                except Exception:  # a bug: the streams end, the log says why
                    log.exception("cannot compute the state of job %s", job_id)
                    entry.state, entry.error = None, VRError("internal error (see the server log)")
                    entry.error.status = 500
                entry.version += 1
                bumped, entry.bumped = entry.bumped, asyncio.Event()
                bumped.set()
        finally:
            entry.refresher = None

    async def follow(self, job_id: str) -> Follower:
        """A place among the job's followers, with its current state computed. Raises
        TooManyStreams or StreamsFull past the caps, NotFound for an unknown job."""
        self.loop = asyncio.get_running_loop()
        if self.total >= self.max_total:
            raise StreamsFull(
                f"the server already serves {self.max_total} progress streams "
                "(VROLLOUT_MAX_STREAMS); poll GET /api/jobs/{id} or retry later"
            )
        entry = self.entries.get(job_id)
        if entry is not None and entry.followers >= self.max_per_job:
            raise TooManyStreams(
                f"job {job_id} already has {self.max_per_job} progress streams "
                "(VROLLOUT_MAX_STREAMS_PER_JOB); close one, or poll GET /api/jobs/{id}"
            )
        if entry is None:
            entry = self.entries[job_id] = _Entry()
            self._mark(job_id)  # the first state
        entry.followers += 1
        self.total += 1
        follower = Follower(self, job_id, entry)
        try:
            while entry.version == 0:
                await entry.bumped.wait()
            if entry.state is None:
                raise entry.error or NotFound(f"no job with id {job_id!r}")
        except BaseException:
            follower.close()
            raise
        return follower

    def _leave(self, job_id: str, entry: _Entry) -> None:
        entry.followers -= 1
        self.total -= 1
        if entry.followers == 0 and self.entries.get(job_id) is entry:
            del self.entries[job_id]


class Follower:
    """One stream's place among a job's followers. `close()` (idempotent) gives it back."""

    def __init__(self, feed: JobFeed, job_id: str, entry: _Entry) -> None:
        self.feed, self.job_id, self.entry = feed, job_id, entry
        self.closed = False

    async def states(self, idle_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The current state, then each new one. Ends when the job is gone or when no new state
        came for `idle_timeout` seconds (a client that still listens reconnects)."""
        seen = 0
        while True:
            entry = self.entry
            if entry.version == seen:
                try:
                    await asyncio.wait_for(entry.bumped.wait(), idle_timeout)
                except asyncio.TimeoutError:
                    return
                continue
            seen = entry.version
            if entry.state is None:
                return
            yield entry.state

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed._leave(self.job_id, self.entry)
