"""The file commands on a Ray cluster, through Ray Data (docs/ray.md).

`vrollout analyze|localize|pedagogical FILE... --out DIR --ray ADDRESS`: each source is read by a
Ray Data read task (`LinesSource`: our own readers, so limits, presets, `--map` and line numbers
are those of a plain run; lines already in the output or of another shard are skipped there),
`map_batches` hands batches of lines to a pool of `LineWorker` actors (each loads the models once
and runs the same per-line pipeline a plain run does: `Task.lines`), and the results stream back
to the driver in input order (`preserve_order`), which writes the same folder as without the flag.
Ray Data owns placement, back-pressure and retries: an actor that dies is restarted and its batch
run again, and a line's result is taken once, when its batch comes back. The driver commits (flushes
its files) after each batch, so a killed driver continues with `--resume`.

Ray is optional: it is imported inside these functions only, never at `import vrollout`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory, VRError

if TYPE_CHECKING:
    from vrollout.config import Settings
    from vrollout.inputs.paths import Sources

INSTALL = "--ray needs Ray: pip install 'virtual-rollout[ray]' (or pip install 'ray[data]')"
BLOCK_ROWS = 64  # rows a read task puts in one block (by default; --batch-size sets it)
COLUMNS = ("number", "row", "error", "fatal")  # a line's number, its JSON, its LineError, a file's error
RESULTS = ("number", "result", "error", "keys", "fatal", "stop")  # what a worker gives back per line


class RayMissing(VRError):
    """--ray without Ray installed."""


def require_ray() -> Any:
    """The `ray` module, with Ray Data; `RayMissing` saying how to install it otherwise."""
    try:
        import ray
        import ray.data  # noqa: F401 (the extra: ray[data])
    except ImportError:
        raise RayMissing(INSTALL) from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """Where and how wide: `address` as Ray takes it (`auto`, `ray://host:port`) or `local` (start
    one here); workers, each with `gpus` (fractions allowed) and `cpus`; lines per batch."""

    address: str = "local"
    workers: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name, low in (("workers", 1), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise BadTrajectory(f"--{name.replace('_', '-')} must be at least {low}")
        if self.gpus < 0 or self.cpus <= 0:
            raise BadTrajectory("--gpus-per-worker must be at least 0 and --cpus-per-worker above 0")


def cluster_of(args: Any) -> Cluster | None:
    """The `--ray` flags of a command's arguments; None without `--ray`."""
    address = getattr(args, "ray", None)
    if address is None:
        return None
    return Cluster(
        address=address,
        workers=getattr(args, "workers", None) or 1,
        gpus=getattr(args, "gpus_per_worker", None) or 0.0,
        cpus=getattr(args, "cpus_per_worker", None) or 1.0,
        batch_size=getattr(args, "batch_size", None) or 64,
    )


@dataclass(frozen=True)
class Task:
    """What a worker does with a batch: `lines(analyzer, rows, unknown, params)` gives each line's
    (number, result or VRError) in line order, as the plain run's pipeline does (a module-level
    function, so that it travels to the workers by name); `params`: the rest, picklable (options,
    privileged text, a sibling index)."""

    lines: Callable[
        [Any, list[tuple[int, Any]], dict[str, list[int]], dict[str, Any]], Iterable[tuple[int, Any]]
    ]
    params: dict[str, Any] = field(default_factory=dict)


class LineWorker:
    """The callable class of `map_batches`: loads the models once (`analyzer`: given, in process),
    then runs each batch of lines (an Arrow table of COLUMNS) and gives back a table of RESULTS:
    each line's number, result (pickled: the driver gets the very dict a plain run writes), error
    message and the unknown keys it carried. A file's error rides through as the last row
    (`fatal`); models that cannot be loaded, as one row (`stop`) for the driver to say."""

    def __init__(
        self, settings: Settings, task: Task, analyzer: Any = None, threads: int | None = None
    ) -> None:
        self.stop: str | None = None
        if threads is not None:  # `local`: the threads a plain run's torch takes here, shared by the workers
            import torch

            torch.set_num_threads(threads)
        if analyzer is None:
            from vrollout.pipeline.analyzer import Analyzer

            try:
                analyzer = Analyzer.from_settings(settings, None)  # the driver stores
            except VRError as exc:  # said once by the driver, as a plain run says it, not as a crash
                self.stop = exc.message
        self.analyzer = analyzer
        self.task = task

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        from vrollout.inputs.trajectories import LineError

        out: dict[str, list[Any]] = {name: [] for name in RESULTS}
        if self.stop is not None:
            return pa.table(
                {**out, "number": [0], "stop": [self.stop]} | _nulls(RESULTS[1:-1]), schema=_results_schema()
            )
        columns = {name: batch.column(name).to_pylist() for name in COLUMNS}
        rows, fatal = [], None
        for number, row, error, broken in zip(*columns.values(), strict=True):
            if broken is not None:
                fatal = (number, broken)
            elif error is not None:
                rows.append((number, LineError(number, error)))
            else:
                rows.append((number, json.loads(row)))
        unknown: dict[str, list[int]] = {}
        for number, result in self.task.lines(self.analyzer, rows, unknown, self.task.params) if rows else []:
            failed = isinstance(result, VRError)
            out["number"].append(number)
            out["result"].append(None if failed else pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            out["error"].append(result.message if failed else None)
        keys: dict[int, list[str]] = {}
        for key, numbers in unknown.items():
            for number in numbers:
                keys.setdefault(number, []).append(key)
        out["keys"] = [json.dumps(keys[n]) if n in keys else None for n in out["number"]]
        out["fatal"] = [None] * len(out["number"])
        if fatal is not None:
            for name, value in (("number", fatal[0]), ("result", None), ("error", None), ("keys", None)):
                out[name].append(value)
            out["fatal"].append(fatal[1])
        out["stop"] = [None] * len(out["number"])
        return pa.table(out, schema=_results_schema())


class DriverModels:
    """What the driver of `vrollout analyze --ray` needs of the models, without loading them (the
    workers do: the driver's machine needs no GPU and no second copy): the store, and the models'
    names for the report, read from the first analysis that comes back (`watch`). Only when none
    does (every line failed) are the models loaded here, for their names."""

    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings, self.store = settings, store
        self.names: tuple[str, str] | None = None
        self._pair: Any = None

    def watch(self, lines: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        for number, result in lines:
            if self.names is None and isinstance(result, dict):
                self.names = (result["student"]["model"], result["teacher"]["model"])
            yield number, result

    @property
    def pair(self) -> Any:
        if self.names is not None:
            from types import SimpleNamespace

            student, teacher = (SimpleNamespace(name=name) for name in self.names)
            return SimpleNamespace(student=student, teacher=teacher)
        if self._pair is None:
            from vrollout.pipeline.analyzer import Analyzer

            self._pair = Analyzer.from_settings(self.settings, None).pair
        return self._pair


class ModelsNotLoaded(VRError):
    """The workers could not load the models (the plain run's message): the run stops."""


def _nulls(names: Iterable[str]) -> dict[str, list[None]]:
    return {name: [None] for name in names}


def _results_schema() -> Any:
    import pyarrow as pa

    fields = [("number", pa.int64()), ("result", pa.binary())]
    return pa.schema(fields + [(n, pa.string()) for n in RESULTS[2:]])


@dataclass(frozen=True)
class SiblingPass:
    """`--teacher-context sibling`: the file's options and privileged text, with which a first
    pass over the whole file builds its sibling index (cluster.siblings)."""

    options: dict[str, Any]
    privileged: str | None = None


@dataclass(frozen=True)
class Keep:
    """Which line numbers to run: of this shard (`I/N`), not already in the output (`--resume`)."""

    done: frozenset[int] = frozenset()
    shard: tuple[int, int] | None = None

    def __call__(self, number: int) -> bool:
        mine = self.shard is None or (number - 1) % self.shard[1] == self.shard[0]
        return mine and number not in self.done


def read_blocks(
    sources: Sources, index: int, offset: int, keep: Keep, size: int = BLOCK_ROWS
) -> Iterator[Any]:
    """Source `index`'s kept rows as Arrow blocks of COLUMNS, `size` rows each (a block is what
    one worker takes at a time: a batch's worth spreads a file over the workers). A file that
    goes wrong part way ends with a row carrying its error (`fatal`), after the rows before it."""
    import pyarrow as pa
    from vrollout.inputs.trajectories import LineError

    schema = _schema()
    block: dict[str, list[Any]] = {name: [] for name in COLUMNS}

    def add(number: int, row: str | None, error: str | None, fatal: str | None) -> None:
        for name, value in zip(COLUMNS, (number, row, error, fatal), strict=True):
            block[name].append(value)

    last = offset
    try:
        for number, row in sources.part(index, offset):
            last = number
            if not keep(number):
                continue
            if isinstance(row, LineError):
                add(number, None, row.error, None)
            else:
                add(number, json.dumps(row), None, None)
            if len(block["number"]) >= size:
                yield pa.table(block, schema=schema)
                block = {name: [] for name in COLUMNS}
    except VRError as exc:
        add(last, None, None, exc.message)
    if block["number"]:
        yield pa.table(block, schema=schema)


def _source(sources: Sources, offsets: list[int], keep: Keep, size: int) -> Any:
    """A Ray Data datasource: one read task per source file, our readers inside it."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class LinesSource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            tasks = []
            for index, offset in enumerate(offsets):
                meta = BlockMetadata(
                    num_rows=None, size_bytes=None, input_files=[sources.paths[index]], exec_stats=None
                )
                tasks.append(ReadTask(lambda i=index, o=offset: read_blocks(sources, i, o, keep, size), meta))
            return tasks

    return LinesSource()


def connect(cluster: Cluster) -> bool:
    """Join (or, for `local`, start) the Ray cluster; True when this call started Ray (the
    caller shuts it down). Ray already running in this process (a notebook, a test) is used."""
    import logging

    ray = require_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the driver's bar says how far it is
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": "WARNING"}
    if cluster.address == "local":
        # Enough CPUs for the workers and a read task; on a small machine, one core left to the rest.
        cpus = max(2, int(cluster.workers * cluster.cpus) + 1)
        # Ray runs its workers at niceness 15 (a cluster node's own services come first): here they
        # would lose every core to whatever else runs on this machine, the driver included, where a
        # plain run competes as an equal. The models' work gets the priority a plain run has.
        config = {"worker_niceness": 0}
        ray.init(num_cpus=cpus, include_dashboard=False, _system_config=config, **quiet)
    else:
        ray.init(address=cluster.address, **quiet)
    return True


def cluster_lines(
    sources: Sources,
    task: Task,
    settings: Settings,
    cluster: Cluster,
    *,
    keep: Keep,
    unknown: dict[str, list[int]],
    progress: Callable[[int], None] = lambda n: None,
    committed: Callable[[], None] = lambda: None,
    siblings: SiblingPass | None = None,
) -> Iterator[tuple[int, Any]]:
    """Each kept line's (number, result) or (number, VRError), in line order, run on the cluster.
    `unknown` gets the keys kept in meta (key -> line numbers), as a plain run's `file_lines` adds
    them; `progress(n)`: n more lines done; `committed()`: the lines yielded so far are handled
    (the driver flushes its files); `siblings`: the file's options and privileged text, for a
    first pass over every line (every shard, done or not) that gives the task its sibling index
    (`params["siblings"]`). A file that goes wrong part way raises its error after the lines
    before it."""
    ray = require_ray()
    started = connect(cluster)
    try:
        offsets = sources.offsets() if sources.several else [0]
        _order(ray)

        def read(which: Keep) -> Any:
            source = _source(sources, offsets, which, cluster.batch_size)
            return ray.data.read_datasource(source, override_num_blocks=len(offsets))

        if siblings is not None:
            task = _with_siblings(ray, task, read(Keep()), settings, cluster, siblings)
        lines = read(keep)
        yield from _through_workers(ray, lines, task, settings, cluster, unknown, progress, committed)
    finally:
        if started:
            ray.shutdown()


def run_rows(
    rows: list[tuple[int, Any]],
    task: Task,
    settings: Settings,
    cluster: Cluster,
    *,
    unknown: dict[str, list[int]],
    progress: Callable[[int], None] = lambda n: None,
    siblings: SiblingPass | None = None,
) -> Iterator[tuple[int, Any]]:
    """`cluster_lines` for lines already read on the driver (a command that holds its file whole,
    `localize`; `analyze_many` given trajectories rather than a path)."""
    import pyarrow as pa
    from vrollout.inputs.trajectories import LineError

    ray = require_ray()
    started = connect(cluster)
    try:
        _order(ray)
        table = pa.table(
            {
                "number": [n for n, _ in rows],
                "row": [None if isinstance(r, LineError) else json.dumps(r) for _, r in rows],
                "error": [r.error if isinstance(r, LineError) else None for _, r in rows],
                "fatal": [None] * len(rows),
            },
            schema=_schema(),
        )
        size = cluster.batch_size
        lines = ray.data.from_arrow([table.slice(i, size) for i in range(0, max(len(rows), 1), size)])
        if siblings is not None:
            task = _with_siblings(ray, task, lines, settings, cluster, siblings)
        yield from _through_workers(ray, lines, task, settings, cluster, unknown, progress, lambda: None)
    finally:
        if started:
            ray.shutdown()


def _with_siblings(
    ray: Any, task: Task, lines: Any, settings: Settings, cluster: Cluster, siblings: SiblingPass
) -> Task:
    """`task` with the sibling index of `lines` (every line), built by a Ray Data pass."""
    from vrollout.cluster.siblings import index_on_cluster

    index = index_on_cluster(ray, lines, settings, cluster.batch_size, siblings.options, siblings.privileged)
    return Task(task.lines, {**task.params, "siblings": index})


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("number", pa.int64())] + [(n, pa.string()) for n in COLUMNS[1:]])


def _order(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # results in input order
    context.enable_progress_bars = False  # the driver's one bar


def local_threads(cluster: Cluster) -> int | None:
    """Torch threads for each worker of a `local` Ray: this machine's cores shared out, as a plain
    run would use them all (Ray would give a worker of one CPU one thread: half the speed of a
    plain run on two cores). Elsewhere Ray's own setting stands (its CPUs per worker)."""
    if cluster.address != "local":
        return None
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = min(usable, psutil.cpu_count(logical=False) or usable)  # torch's default: physical cores
    return max(1, cores // cluster.workers)


def _through_workers(
    ray: Any,
    lines: Any,
    task: Task,
    settings: Settings,
    cluster: Cluster,
    unknown: dict[str, list[int]],
    progress: Callable[[int], None],
    committed: Callable[[], None],
) -> Iterator[tuple[int, Any]]:
    results = lines.map_batches(
        LineWorker,
        fn_constructor_args=(settings, task, None, local_threads(cluster)),
        batch_size=cluster.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cluster.workers),
        num_cpus=cluster.cpus,
        num_gpus=cluster.gpus or None,
    )
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from _results(batch, unknown, progress)
        committed()


def _results(
    batch: Any, unknown: dict[str, list[int]], progress: Callable[[int], None]
) -> Iterator[tuple[int, Any]]:
    done = 0
    for number, result, error, keys, fatal, stop in zip(
        *(batch.column(n).to_pylist() for n in RESULTS), strict=True
    ):
        if stop is not None:
            raise ModelsNotLoaded(stop)
        if fatal is not None:
            progress(done)
            raise BadTrajectory(fatal)
        for key in json.loads(keys) if keys else []:
            unknown.setdefault(key, []).append(number)
        yield number, BadTrajectory(error) if error is not None else pickle.loads(result)
        done += 1
    progress(done)
