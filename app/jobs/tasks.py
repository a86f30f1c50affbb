"""In-memory progress of single analyses started from the browser (one task per Analyze click).

A task can be cancelled: its work on the model worker then never starts, or stops at its next
step boundary, and nothing of it is stored."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from vrollout.errors import NotFound


@dataclass
class Task:
    id: str
    state: str = "queued"  # queued | running | done | error | cancelled
    stage: str = "queued"  # generate | replay | continuations | done
    done: int = 0
    total: int = 0
    analysis_id: str | None = None  # analyses are stored: the task points at them
    result: dict[str, Any] | None = None  # other results (pedagogical rollouts) travel inline
    error: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    cancel_requested: bool = False
    on_cancel: Callable[[], None] | None = field(default=None, repr=False)  # stops the model work

    def progress(self, stage: str, done: int, total: int) -> None:
        """Called from the model thread; plain attribute writes are atomic enough to read."""
        self.state, self.stage, self.done, self.total = "running", stage, done, total

    def cancel(self) -> None:
        """Ask the work to stop; `state` says `cancelled` once it has (a finished task stays)."""
        if self.state in ("done", "error", "cancelled"):
            return
        self.cancel_requested = True
        if self.on_cancel is not None:
            self.on_cancel()

    def finish(self, result: dict[str, Any], stored: bool) -> None:
        if stored:  # an analysis: stored, so only its id travels
            self.analysis_id = result["id"]
        else:
            self.result = result
        self.state, self.stage = "done", "done"

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "on_cancel"}


class Tasks:
    """The newest `keep` tasks; older ones are forgotten (their analyses stay in the store)."""

    def __init__(self, keep: int = 500) -> None:
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._lock = threading.Lock()
        self._running: set[asyncio.Task[None]] = set()
        self.keep = keep

    def keep_running(self, job: asyncio.Task[None]) -> None:
        """Hold a reference to a background job until it ends (the loop keeps only weak ones)."""
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    def create(self, task_id: str) -> Task:
        return self.add(Task(task_id))

    def add(self, task: Task) -> Task:
        with self._lock:
            self._tasks[task.id] = task
            while len(self._tasks) > self.keep:
                self._tasks.popitem(last=False)
        return task

    def get(self, task_id: str) -> Task:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id!r}")
        return task

    def cancel(self, task_id: str) -> Task:
        task = self.get(task_id)
        task.cancel()
        return task
