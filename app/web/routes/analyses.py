"""JSON API routes. Thin: validation and work live in `service.Analyzer`."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic_core import to_json
from vrollout import __version__
from vrollout.errors import Cancelled, VRError
from vrollout.ids import new_id
from vrollout.jobs.tasks import Task, Tasks
from vrollout.jobs.worker import ModelWorker
from vrollout.pipeline.analyzer import Analyzer
from vrollout.report.analysis_view import steps_range
from vrollout.report.figures import figure_dict
from vrollout.schema.analysis import Analysis, Noise
from vrollout.schema.requests import AnalyzeRequest, PedagogicalRequest
from vrollout.schema.responses import (
    AnalysisList,
    Deleted,
    ErrorBody,
    Figure,
    Health,
    Models,
    PedagogicalResult,
    StepsRange,
    TaskStarted,
    TaskState,
)
from vrollout.storage.jobs import Jobs
from vrollout.storage.store import SQLITE_MAX_INT, Store

log = logging.getLogger(__name__)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 422, 429, 503, 507)
}


def from_state(name: str) -> Any:
    """A dependency that hands a route one of the things the lifespan put on `app.state`."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    return dependency


AnalyzerDep = Annotated[Analyzer, Depends(from_state("analyzer"))]
WorkerDep = Annotated[ModelWorker, Depends(from_state("worker"))]
StoreDep = Annotated[Store, Depends(from_state("store"))]
TasksDep = Annotated[Tasks, Depends(from_state("tasks"))]

router = APIRouter(prefix="/api", tags=["api"], responses=ERRORS)


@router.get("/health", response_model=Health, response_model_exclude_unset=True)
async def health(request: Request) -> dict[str, Any]:
    """Liveness: answers at once, even while the model works."""
    return {
        "ok": True,
        "version": __version__,
        "models_loaded": hasattr(request.app.state, "analyzer"),
    }


def source_kind(source: str | None) -> str | None:
    """Where a model came from, as a kind only (`gguf`, `folder`, `hub`, `vllm`): the server's
    paths and addresses are not shown to whoever can reach it without a token."""
    if source is None:
        return None
    if source.startswith(("http://", "https://")):
        return "vllm"
    if source.endswith(".gguf"):
        return "gguf"
    if source.startswith(("/", "~", ".")) or "\\" in source or Path(source).exists():
        return "folder"
    return "hub"


@router.get("/models", response_model=Models, response_model_exclude_unset=True)
async def models(request: Request, analyzer: AnalyzerDep) -> dict[str, Any]:
    """Student and teacher: name, source, vocabulary, device, dtype, shared weights, template;
    the backend (on vLLM: K and each replica's state). Without an API token, each model's
    source is its kind only (`source_kind`), and a replica's address and last error (which names
    it) are left out."""
    described = {**analyzer.pair.describe(), **analyzer.backend.describe()}
    if request.app.state.settings.api_token is None:
        for role in ("student", "teacher"):
            model = described[role]
            device = model.get("device")
            if isinstance(device, str) and device.startswith("vllm "):  # "vllm URL URL...": the kind only
                device = "vllm"
            described[role] = {**model, "source": source_kind(model.get("source")), "device": device}
        if "replicas" in described:
            described["replicas"] = [{**r, "url": None, "last_error": None} for r in described["replicas"]]
    return described


@router.post("/models/noise", response_model=Noise)
async def measure_noise(analyzer: AnalyzerDep, worker: WorkerDep) -> dict[str, Any]:
    """vLLM: measure the servers' dtype and log-prob error bound again, on the probe (as at
    start-up); later analyses carry the new bound. docs/metrics.md, "Noise bounds"."""
    measure = getattr(analyzer.backend, "measure_noise", None)
    if measure is None:
        raise VRError("noise is measured on the vllm backend only: the local engine's numbers are exact")
    noise = await worker.run(lambda progress: measure())
    return noise.as_dict()


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects. Called once the body has been read, so the next
    ASGI message can only be the disconnect (or the end of the response)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/analyze", response_model=Analysis)
async def analyze(
    body: AnalyzeRequest, request: Request, analyzer: AnalyzerDep, worker: WorkerDep, store: StoreDep
) -> Any:
    """Replay one trajectory through student and teacher; the analysis is stored and returned.
    A client that goes away cancels its request: nothing runs (or it stops at the next step)
    and nothing is stored."""
    prepared = await run_in_threadpool(analyzer.prepare, body)
    run = partial(analyzer.run, store=False)  # stored below, only for a client still waiting
    analysis = await worker.run(run, prepared, abandon=client_gone(request))
    await run_in_threadpool(store.save, analysis)
    return await analysis_response(analysis)


async def analysis_response(analysis: dict[str, Any]) -> Response:
    """An analysis as JSON, serialised on a thread. Returning a Response skips FastAPI's check
    against `Analysis` on the event loop: for 4,000 steps with top_k 20 it took 2.4 s, during
    which /api/health could not answer. The core built the dict; the schema documents it."""
    body = await run_in_threadpool(to_json, analysis, inf_nan_mode="null")
    return Response(body, media_type="application/json")


def start_task(
    tasks: Tasks, worker: ModelWorker, fn: Any, prepared: Any, store: Store | None = None
) -> dict[str, Any]:
    """Run `fn(prepared, progress=...)` on the model worker in the background (429 when the
    queue is full). With `store`, the result is an analysis, stored unless the task was
    cancelled (the task then carries its id, not the result)."""
    task = Task(new_id())
    work_item = worker.submit(fn, prepared, progress=task.progress)  # QueueFull: no task made
    task.on_cancel = partial(worker.cancel, work_item)
    tasks.add(task)

    async def work() -> None:
        try:
            result = await asyncio.wrap_future(work_item.future)
            if task.cancel_requested:
                raise Cancelled("the task was cancelled")
            if store is not None:
                await run_in_threadpool(store.save, result)
            task.finish(result, stored=store is not None)
        except (Cancelled, asyncio.CancelledError):
            task.state = "cancelled"
        except VRError as exc:
            task.state, task.error = "error", {"error": exc.message, "status": exc.status}
        except Exception:  # a bug, not bad input: logged, and the task says so
            log.exception("task %s failed", task.id)
            task.state, task.error = "error", {"error": "internal error", "status": 500}

    tasks.keep_running(asyncio.get_running_loop().create_task(work()))
    return {"task_id": task.id, "url": f"/api/tasks/{task.id}"}


@router.post("/tasks", status_code=202, response_model=TaskStarted)
async def start_analysis_task(
    body: AnalyzeRequest, analyzer: AnalyzerDep, worker: WorkerDep, tasks: TasksDep
) -> dict[str, Any]:
    """Like /api/analyze, but returns at once; follow `GET /api/tasks/{id}` for progress."""
    prepared = await run_in_threadpool(analyzer.prepare, body)
    return start_task(tasks, worker, partial(analyzer.run, store=False), prepared, store=analyzer.store)


@router.post("/pedagogical", response_model=PedagogicalResult, response_model_exclude_unset=True)
async def pedagogical(
    body: PedagogicalRequest, request: Request, analyzer: AnalyzerDep, worker: WorkerDep
) -> Any:
    """The pedagogical rollout: the student proposes each token; the teacher substitutes its
    top-1 only where the proposal is unacceptable (probability below `threshold`, or rank above
    `max_rank`). With `sweep`, also the interventions-vs-success curve over thresholds. A client
    that goes away cancels its request."""
    prepared = await run_in_threadpool(analyzer.prepare_pedagogical, body)
    return await worker.run(analyzer.pedagogical, prepared, abandon=client_gone(request))


@router.post("/pedagogical/tasks", status_code=202, response_model=TaskStarted)
async def start_pedagogical_task(
    body: PedagogicalRequest, analyzer: AnalyzerDep, worker: WorkerDep, tasks: TasksDep
) -> dict[str, Any]:
    """Like /api/pedagogical, in the background; the result arrives in the task's `result`."""
    prepared = await run_in_threadpool(analyzer.prepare_pedagogical, body)
    return start_task(tasks, worker, analyzer.pedagogical, prepared)


@router.get("/tasks/{task_id}", response_model=TaskState, response_model_exclude_unset=True)
async def task_state(task_id: str, tasks: TasksDep) -> dict[str, Any]:
    """State of a task: stage (generate, replay, ...), done/total, and the analysis id when done."""
    return tasks.get(task_id).as_dict()


@router.post("/tasks/{task_id}/cancel", response_model=TaskState, response_model_exclude_unset=True)
async def cancel_task(task_id: str, tasks: TasksDep) -> dict[str, Any]:
    """Cancel a task: a queued one never runs, a running one stops at its next step; nothing
    of it is stored. Its state becomes `cancelled` (a finished task stays as it was)."""
    return tasks.cancel(task_id).as_dict()


@router.get("/analyses", response_model=AnalysisList)
async def list_analyses(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)] = 0,
) -> Any:
    """Stored analyses, newest first, without their steps."""
    items, total = await run_in_threadpool(store.list, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/analyses/{analysis_id}/figure", response_model=Figure)
async def get_figure(analysis_id: str, store: StoreDep) -> Response:
    """The Plotly figure the analysis page shows; open it with `plotly.io.from_json`."""
    analysis = await run_in_threadpool(store.get, analysis_id)
    figure = await run_in_threadpool(lambda: json.dumps(figure_dict(analysis)))
    return Response(figure, media_type="application/json")


class RecentAnalyses:
    """The last few analyses read, parsed: a long page's reader scrolls through its steps by
    range, and decompressing and parsing a 32,000-token analysis for every block would cost
    about a second each time. Each read first asks the database whether the id is still there,
    so a deleted analysis is never served from here."""

    def __init__(self, store: Store, size: int = 4) -> None:
        self.store, self.size = store, size
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.derived: dict[tuple[str, Any], Any] = {}  # what pages built from an analysis kept here
        self.lock = threading.Lock()

    def derive(self, analysis_id: str, key: Any, build: Any) -> Any:
        """`build(analysis)`, kept as long as the analysis is (a page's figure and view: about a
        second to build at 32,000 tokens, the same on every load)."""
        analysis = self.get(analysis_id)
        with self.lock:
            if (analysis_id, key) in self.derived:
                return self.derived[(analysis_id, key)]
        value = build(analysis)
        with self.lock:
            if analysis_id in self.items:
                self.derived[(analysis_id, key)] = value
        return value

    def get(self, analysis_id: str) -> dict[str, Any]:
        with self.lock:
            cached = self.items.get(analysis_id)
        if cached is not None:
            with self.store.connect() as db:
                if db.execute("SELECT 1 FROM analyses WHERE id = ?", (analysis_id,)).fetchone():
                    with self.lock:
                        self.items.move_to_end(analysis_id)
                    return cached
        analysis = self.store.get(analysis_id)  # NotFound: a clear 404
        with self.lock:
            self.items[analysis_id] = analysis
            while len(self.items) > self.size:
                gone, _ = self.items.popitem(last=False)
                self.derived = {k: v for k, v in self.derived.items() if k[0] != gone}
        return analysis


def recent_analyses(request: Request) -> RecentAnalyses:
    """The app's RecentAnalyses, made on first use (over the app's store)."""
    state = request.app.state
    if getattr(state, "recent_analyses", None) is None:
        state.recent_analyses = RecentAnalyses(state.store)
    return state.recent_analyses


RecentDep = Annotated[RecentAnalyses, Depends(recent_analyses)]


@router.get("/analyses/{analysis_id}/steps", response_model=StepsRange)
async def get_steps(
    analysis_id: str,
    recent: RecentDep,
    start: Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)] = 0,
    stop: Annotated[int | None, Query(ge=0, le=SQLITE_MAX_INT)] = None,
) -> Response:
    """Steps [start, stop) of a stored analysis, at most 2,000 at a time (stop defaults to start +
    200 and is cut at the total): the analysis page fetches what comes into view."""
    analysis = await run_in_threadpool(recent.get, analysis_id)
    body = await run_in_threadpool(lambda: to_json(steps_range(analysis, start, stop), inf_nan_mode="null"))
    return Response(body, media_type="application/json")


@router.delete("/analyses/{analysis_id}", response_model=Deleted, response_model_exclude_unset=True)
async def delete_analysis(
    analysis_id: str, jobs: Annotated[Jobs, Depends(from_state("jobs"))]
) -> dict[str, Any]:
    """Delete a stored analysis. A job's line that held it stays done and says it was deleted."""
    await run_in_threadpool(jobs.delete_analysis, analysis_id)
    return {"ok": True, "id": analysis_id}


@router.get("/analyses/{analysis_id}", response_model=Analysis)
async def get_analysis(analysis_id: str, store: StoreDep) -> Any:
    """One stored analysis, exactly as /api/analyze returned it."""
    return await analysis_response(await run_in_threadpool(store.get, analysis_id))
