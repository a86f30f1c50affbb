"""The model worker: one thread runs all model work, from two lanes, bounded, fair and cancellable.

Interactive work (the API's analyses and pedagogical rollouts, and their background tasks) waits
in a bounded queue: past `max_queued` the next request is refused with `QueueFull` (429 and a
`Retry-After`) instead of waiting behind hours of work. The job runner's lines wait in a lane of
their own. When both lanes have work the thread alternates between them, so an interactive
request waits for at most one job group per request ahead of it, and a flood of interactive
requests cannot starve a job either.

Every piece of work has a cancel flag. Cancelled before it starts, it never runs. Interactive work
is called with `progress=`, a callback that raises `Cancelled` once the flag is set: the engine
reports progress at every step boundary, so running work stops at the next one. No HTTP here:
the routes decide when to cancel (e.g. when the client disconnects).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Future
from typing import Any, Literal, TypeVar

from vrollout.errors import Cancelled, QueueFull
from vrollout.pipeline.replay import Progress, _no_progress

T = TypeVar("T")
Lane = Literal["interactive", "jobs"]


class Work:
    """One call waiting for or running on the worker thread."""

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], lane: Lane
    ) -> None:
        self.fn, self.args, self.kwargs, self.lane = fn, args, kwargs, lane
        self.future: Future[Any] = Future()
        self.cancelled = threading.Event()

    def checkpoint(self, forward: Progress) -> Progress:
        """A progress callback that stops this work at the step boundary after a cancel."""

        def progress(stage: str, done: int, total: int) -> None:
            if self.cancelled.is_set():
                raise Cancelled("the request was cancelled")
            forward(stage, done, total)

        return progress


class ModelWorker:
    """The one thread that runs model work (see the module docstring)."""

    def __init__(self, max_queued: int = 64) -> None:
        self.max_queued = max_queued
        self._lanes: dict[Lane, deque[Work]] = {"interactive": deque(), "jobs": deque()}
        self._last: Lane = "jobs"  # the lane served last; the other goes first when both wait
        self._running: Work | None = None
        self._seconds_per_work = 1.0  # a running mean, for Retry-After
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="vrollout-model", daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[..., Any], *args: Any, lane: Lane = "interactive", progress: Progress | None = None
    ) -> Work:
        """Queue `fn(*args)`; interactive work also gets `progress=` (see the module docstring).
        Raises `QueueFull` when the interactive queue is full."""
        kwargs = {}
        work = Work(fn, args, kwargs, lane)
        if lane == "interactive":
            kwargs["progress"] = work.checkpoint(progress or _no_progress)
        with self._wake:
            if self._closed:
                raise Cancelled("the server is shutting down")
            queue = self._lanes[lane]
            if lane == "interactive" and len(queue) >= self.max_queued:
                wait = math.ceil(self._seconds_per_work * (len(queue) + 1))
                raise QueueFull(
                    f"the model is busy: {len(queue)} requests are waiting, the most allowed "
                    f"(VROLLOUT_MAX_QUEUED_REQUESTS); retry in about {wait} s",
                    retry_after=min(max(wait, 1), 3600),
                )
            queue.append(work)
            self._wake.notify()
        return work

    def cancel(self, work: Work) -> None:
        """Work not yet started never runs; running work stops at its next step boundary."""
        work.cancelled.set()
        with self._wake:
            queue = self._lanes[work.lane]
            if work in queue:
                queue.remove(work)
                work.future.cancel()

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        lane: Lane = "interactive",
        progress: Progress | None = None,
        abandon: Awaitable[Any] | None = None,
    ) -> T:
        """`fn(*args)` on the worker thread. If `abandon` finishes first (e.g. the client went
        away), the work is cancelled and `Cancelled` raised."""
        try:
            work = self.submit(fn, *args, lane=lane, progress=progress)
        except BaseException:
            if asyncio.iscoroutine(abandon):
                abandon.close()  # never started: no "never awaited" warning
            raise
        result = asyncio.wrap_future(work.future)
        if abandon is None:
            try:
                return await result
            except asyncio.CancelledError:
                self.cancel(work)
                raise
        watcher = asyncio.ensure_future(abandon)
        try:
            await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancel(work)
            raise
        finally:
            watcher.cancel()
        if not result.done():
            self.cancel(work)
            result.cancel()  # nobody will read it: no "exception never retrieved" later
            raise Cancelled("the client went away")
        return result.result()

    def call(self, fn: Callable[..., T], *args: Any, lane: Lane = "jobs") -> T:
        """`fn(*args)` on the worker thread, waited for from another thread (the job runner's):
        `Cancelled` if the worker closes first."""
        work = self.submit(fn, *args, lane=lane)
        try:
            return work.future.result()
        except CancelledError:
            raise Cancelled("the server is shutting down") from None

    @property
    def closed(self) -> bool:
        """Closed (the server is stopping): nothing more runs."""
        return self._closed

    def describe(self) -> dict[str, Any]:
        """What waits and what runs, for health checks."""
        with self._wake:
            return {
                "queued": len(self._lanes["interactive"]),
                "max_queued": self.max_queued,
                "job_lines_waiting": len(self._lanes["jobs"]),
                "running": self._running is not None,
            }

    def close(self) -> None:
        """Nothing queued runs; running work stops at its next step boundary."""
        with self._wake:
            self._closed = True
            for queue in self._lanes.values():
                while queue:
                    work = queue.popleft()
                    work.cancelled.set()
                    work.future.cancel()
            if self._running is not None:
                self._running.cancelled.set()
            self._wake.notify_all()

    def _next(self) -> Work:
        """Alternate between the lanes when both have work."""
        first: Lane = "interactive" if self._last == "jobs" else "jobs"
        for lane in (first, self._last):
            if self._lanes[lane]:
                self._last = lane
                return self._lanes[lane].popleft()
        raise AssertionError("_next called with both lanes empty")

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not any(self._lanes.values()):
                    self._wake.wait()
                if self._closed:
                    return
                work = self._running = self._next()
            if work.future.set_running_or_notify_cancel():
                started = time.monotonic()
                try:
                    work.future.set_result(work.fn(*work.args, **work.kwargs))
                except BaseException as exc:  # the caller gets it, whatever it is
                    work.future.set_exception(exc)
                elapsed = time.monotonic() - started
                self._seconds_per_work = 0.8 * self._seconds_per_work + 0.2 * elapsed
            with self._wake:
                self._running = None
