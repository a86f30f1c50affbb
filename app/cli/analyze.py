"""`vrollout analyze`, streamed: lines are read one at a time and results written as they come.

Memory stays bounded whatever the file's size: rows come lazily from `inputs.sources.iter_rows`
(JSONL a line at a time, Parquet a batch at a time), a window of them (pipeline.lines.WINDOW) is held at
once, analyses.jsonl is appended and flushed per window, steps.parquet is written a row group at a
time, and the dataset views (summaries, figures, headline, report) are built at the end from
digests (a few hundred bytes per line, report/dataset.py) kept in a temporary file, never from
every analysis in memory. The server's upload limits (VROLLOUT_MAX_UPLOAD_BYTES, _MAX_LINES_PER_JOB)
do not apply here; the per-line ones do.

`--resume` reads the output back (each analysis records its `job.line`), truncates a partly written
last line, and skips the lines already there, so a killed run continues with no line lost or
doubled; a line that failed before and succeeds now is put back in its place when the files
close. `--shard I/N` takes the lines whose number is I modulo N (counting from 0), keeping the
file's own line numbers. Ctrl-C (or SIGTERM) stops after closing every file: whole JSONL lines, a
Parquet file with the steps so far, and the summaries of what was done.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vrollout.config import Settings
from vrollout.errors import BadTrajectory, VRError

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C, as shells report SIGINT


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`I/N` -> (I, N), with 0 <= I < N."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BadTrajectory(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise BadTrajectory(f"--shard {text!r}: I must be at least 0 and less than N")
    return index, count


class StepWriter:
    """steps.parquet, a row group at a time (report/dataset.py's fixed schema): memory holds one
    row group. Closed, it is a valid file with the rows so far (an empty one keeps its columns)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq
        from vrollout.report.dataset import STEP_COLUMNS, step_schema

        self.schema = step_schema()
        self.writer = pq.ParquetWriter(path, self.schema)
        self.columns: dict[str, list[Any]] = {name: [] for name in STEP_COLUMNS}
        self.groups = 0

    def add(self, analysis: dict[str, Any]) -> None:
        from vrollout.report.dataset import ROW_GROUP_ROWS, steps_of

        for row in steps_of(analysis):
            for name, values in self.columns.items():
                values.append(row.get(name))
        if len(self.columns["position"]) >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        self.writer.write_table(pa.table(self.columns, schema=self.schema))
        self.groups += 1
        for values in self.columns.values():
            values.clear()

    def close(self) -> None:
        if self.columns["position"] or not self.groups:
            self.flush()
        self.writer.close()


class Outputs:
    """Where `vrollout analyze` writes: FILE.jsonl, or a folder with analyses.jsonl, steps.parquet
    and (at `finish`) the dataset views. With `resume`, what an earlier run wrote is kept (a partly
    written last line is cut off) and its line numbers are in `done`."""

    def __init__(self, out: Path, resume: bool, shard: str | None) -> None:
        self.folder = None if out.suffix == ".jsonl" else out
        self.path = out if self.folder is None else out / "analyses.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.done: set[int] = set()
        self.last = 0  # the highest line number written so far
        self.in_order = True  # False once a line comes after a higher one (resume: a retried line)
        self.digests: IO[str] | None = None
        self.steps: StepWriter | None = None
        self._start_views()
        if resume and self.path.exists():
            self._read_back()
        self.file = self.path.open("a" if resume else "w", encoding="utf-8")

    def _start_views(self) -> None:
        if self.folder is not None:
            # Unlinked at once (Linux), in the output's folder rather than a possibly small /tmp.
            self.digests = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.folder)  # noqa: SIM115 (closed in finish)
            self.steps = StepWriter(self.folder / "steps.parquet")

    def _read_back(self) -> None:
        """Keep the whole analyses of an earlier run; cut the file after the last one (a run
        killed mid-write leaves part of a line). steps.parquet and the digests are made again
        from them, one analysis at a time."""
        keep = 0
        with self.path.open("rb") as f:
            for raw in f:
                try:
                    analysis = json.loads(raw) if raw.endswith(b"\n") else None
                    line = analysis["job"]["line"]
                except (ValueError, TypeError, KeyError):
                    break  # a partial (or foreign) line: it and anything after it are redone
                if (given := analysis["job"].get("shard")) != self.shard:
                    held = f"--shard {given}" if given else "no --shard"
                    raise BadTrajectory(
                        f"{self.path} was written with {held}: resume it so, or use a new --out"
                    )
                self.done.add(line)
                self._seen(line)
                self._views(analysis)
                keep += len(raw)
        with self.path.open("r+b") as f:
            f.truncate(keep)

    def _views(self, analysis: dict[str, Any]) -> None:
        from vrollout.pipeline.digest import digest

        if self.digests is not None and self.steps is not None:
            self.digests.write(json.dumps(digest(analysis)) + "\n")
            self.steps.add(analysis)

    def _seen(self, line: int) -> None:
        self.in_order = self.in_order and line > self.last
        self.last = max(self.last, line)

    def add(self, analysis: dict[str, Any]) -> None:
        self.file.write(json.dumps(analysis) + "\n")
        self._seen(analysis["job"]["line"])
        self._views(analysis)

    def flush(self) -> None:
        """After each window: whole lines on disk, so a killed run loses at most one window."""
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.steps is not None:
            self.steps.close()
            self.steps = None
        if not self.in_order:
            self._reorder()

    def _reorder(self) -> None:
        """Put the analyses back in line order: after `--resume`, a line that failed in the earlier
        run and succeeds now was appended after later lines. The file is rewritten through an
        index of (line, offset) pairs, then steps.parquet and the digests are made again from it,
        one analysis at a time."""
        index = []
        with self.path.open("rb") as f:
            offset = 0
            for raw in f:
                index.append((json.loads(raw)["job"]["line"], offset, len(raw)))
                offset += len(raw)
        index.sort()
        tmp = self.path.with_name(f".{self.path.name}.reordering")
        with self.path.open("rb") as src, tmp.open("wb") as dst:
            for _, offset, size in index:
                src.seek(offset)
                dst.write(src.read(size))
        tmp.replace(self.path)
        self.in_order = True
        if self.digests is None:
            return
        self.digests.close()
        self._start_views()
        with self.path.open("rb") as f:
            for raw in f:
                self._views(json.loads(raw))
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def finish(self, name: str, errors: list[tuple[int, str]], analyzer: Any, settings: Settings) -> None:
        """The dataset views (`write_views`), from the digests written so far."""
        folder, digests = self.folder, self.digests
        if folder is None or digests is None:
            return
        write_views(folder, name, lambda: _each(digests), _Rows(digests), errors, analyzer, settings)
        digests.close()


def write_views(
    folder: Path,
    name: str,
    each_digest: Callable[[], Iterable[dict[str, Any]]],
    rows: Iterable[dict[str, Any]],
    errors: list[tuple[int, str]],
    analyzer: Any,
    settings: Settings,
) -> None:
    """The dataset views of an --out folder, from the digests (`each_digest()` gives them again
    from the first, each time it is called) and the summary rows: summaries.csv/.jsonl,
    objectives.csv, figures.json, headline.csv/.md/.tex, drift.csv (lines with a step) and
    report.html, written
    piece by piece. The streaming run and `cli.write_dataset` both write them here."""
    from vrollout.pipeline.digest import summary_of
    from vrollout.report.dataset import (
        figures_of,
        jsonl_chunks,
        objective_rows,
        objectives_csv_chunks,
        summaries_csv_chunks,
    )
    from vrollout.report.drift import drift_csv, drift_rows
    from vrollout.report.headline import FORMATS, headline
    from vrollout.report.pages import standalone_assets, template_env

    with (folder / "summaries.csv").open("w", encoding="utf-8", newline="") as f:
        f.writelines(summaries_csv_chunks(summary_of(d) for d in each_digest()))
    with (folder / "summaries.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(jsonl_chunks(rows))
    with (folder / "objectives.csv").open("w", encoding="utf-8", newline="") as f:
        f.writelines(objectives_csv_chunks(objective_rows(each_digest())))  # docs/objectives.md
    figures = figures_of(each_digest())
    (folder / "figures.json").write_text(json.dumps(figures))
    table = headline(each_digest())
    for render, _, suffix in FORMATS.values():
        (folder / f"headline.{suffix}").write_text(render(table))
    drift = drift_rows(each_digest())
    if drift:  # lines carry a training step
        (folder / "drift.csv").write_text(drift_csv(drift))
    env = template_env(settings.templates_dir)  # the pages' filters, autoescaped
    inline, csp = standalone_assets(settings.static_dir, "report.js")
    page = env.get_template("report.html").generate(
        name=name,
        rows=rows,
        errors=errors,
        figures=figures,
        headline=table,
        drift=drift,
        student=analyzer.pair.student.name,
        teacher=analyzer.pair.teacher.name,
        standalone=True,
        csp=csp,
        **inline,
    )
    with (folder / "report.html").open("w", encoding="utf-8") as f:
        f.writelines(page)  # written as rendered: the page of a big run is never one string


def _each(digests: IO[str]) -> Iterator[dict[str, Any]]:
    """The digests written so far, from the first."""
    digests.flush()
    digests.seek(0)
    for line in digests:
        yield json.loads(line)


class _Rows:
    """The summary rows, read from the digests each time they are iterated (the report's table),
    with their count (`rows|length`)."""

    def __init__(self, digests: IO[str]) -> None:
        self.digests = digests
        digests.flush()
        digests.seek(0)
        self.count = sum(1 for _ in digests)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from vrollout.pipeline.digest import summary_of

        return (summary_of(d) for d in _each(self.digests))


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM (a scheduler's stop) is handled as Ctrl-C is, so both close the files."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def no_interrupts() -> Iterator[None]:
    """While the output files are closed and the views written, a second Ctrl-C waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def label(given: Any) -> str:
    """A FILE argument (or several) as messages name it."""
    return given if isinstance(given, str) else " ".join(map(str, given))


def say_line_warnings(sources: Any, unknown: dict[str, list[int]]) -> list[str]:
    """`FILE:LINE: warning: ...` for each unknown key, at the first line (of its own file) that has it."""
    from vrollout.pipeline.lines import key_warnings

    out = []
    for warning in key_warnings(unknown):
        count = f"{warning['count']} line{'s' if warning['count'] != 1 else ''}"
        out.append(f"{sources.where(warning['lines'][0])}: warning: {warning['warning']} ({count})")
    return out


def cluster_of(args: Any) -> Any:
    """The `--ray` flags as a `cluster.ray.Cluster` (Ray checked for now), None without `--ray`."""
    if getattr(args, "ray", None) is None:
        return None
    from vrollout.cluster.ray import cluster_of, require_ray

    require_ray()
    return cluster_of(args)


def add_cluster_flags(p: Any) -> None:
    """`--ray ADDRESS` and the sizes of its workers (docs/ray.md), for the file commands."""
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster: auto (the one this machine belongs to), ray://HOST:PORT, or local "
        "(start one here); needs pip install 'virtual-rollout[ray]'",
    )
    p.add_argument(
        "--workers", type=int, help="with --ray: model workers (default 1), each loads the models once"
    )
    p.add_argument(
        "--gpus-per-worker",
        dest="gpus_per_worker",
        type=float,
        help="with --ray: GPUs per worker (fractions allowed; default 0)",
    )
    p.add_argument(
        "--cpus-per-worker",
        dest="cpus_per_worker",
        type=float,
        help="with --ray: CPUs per worker (default 1)",
    )
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        help="with --ray: lines per batch handed to a worker (default 64)",
    )


def analyze_lines(
    analyzer: Any, rows: list[tuple[int, Any]], unknown: dict[str, list[int]], params: dict[str, Any]
) -> Iterator[tuple[int, Any]]:
    """What a cluster worker runs for `analyze` (`cluster.ray.Task`): the plain run's pipeline
    over its batch of lines."""
    from vrollout.pipeline.lines import file_lines, run_lines

    job = params["job"]
    prepare = file_lines(analyzer, params["options"], params["privileged"], unknown, params["siblings"])

    def run(prepared: list[tuple[int, Any]]) -> Iterator[list[tuple[int, Any]]]:
        return analyzer.run_prepared(prepared, lambda n: {"job": {**job, "line": n}})

    return run_lines(rows, prepare, run)


def analyze_file(args: Any, settings: Settings) -> int:
    """`vrollout analyze FILE... --out OUT [--resume] [--shard I/N] [--ray ADDRESS]`; the exit status."""
    from tqdm import tqdm
    from vrollout.inputs.paths import Sources
    from vrollout.inputs.teacher_context import teacher_options
    from vrollout.pipeline.analyzer import Analyzer
    from vrollout.pipeline.lines import file_lines, run_lines

    cluster = cluster_of(args)  # --ray without Ray, or a size below its bound: main's one-line error
    try:
        sources = Sources(  # JSONL, JSON, Parquet, datasets folders, hf://; folders and globs of them
            args.file,
            settings,
            split=getattr(args, "split", None),
            mapping=getattr(args, "map", None),
            preset=getattr(args, "preset", None),
        )
        shard = parse_shard(args.shard)
        tag = None if shard is None else f"{shard[0]}/{shard[1]}"
        rows = sources.rows()
        first = next(rows, None)  # an unreadable or empty file: said now, before the models load
        teacher = teacher_options(
            getattr(args, "teacher_context", None),
            getattr(args, "teacher_template", None),
        )
        outputs = Outputs(Path(args.out), args.resume, tag)
    except (OSError, VRError) as exc:
        print(f"error: {label(args.file)}: {exc}", file=sys.stderr)
        return 2
    if outputs.done:
        print(f"resuming: {len(outputs.done)} lines already in {outputs.path}", file=sys.stderr)
    from vrollout.storage.store import Store

    store = None if args.no_store else Store(settings.database)  # a damaged one fails before loading
    if cluster is None:
        analyzer = Analyzer.from_settings(settings, store)
    else:  # the workers load the models; the driver needs only their names (and the store)
        from vrollout.cluster.ray import DriverModels

        analyzer = DriverModels(settings, store)
    options = {
        "top_k": args.top_k,
        "continuation_tokens": args.continuation_tokens,
        "recovery": args.recovery,
        "recovery_max_new_tokens": args.recovery_max_new_tokens,
        # the distillation objectives (docs/objectives.md): null = each line's own or the default
        **{name: getattr(args, name, None) for name in ("objectives", "objective_k", "jsd_beta", "clip_tau")},
        **teacher,
    }
    job = {"id": None} if tag is None else {"id": None, "shard": tag}
    siblings, sibling = None, teacher.get("teacher_context") == "sibling"
    if sibling and cluster is None:  # a first pass: every line, every shard (on a cluster, its own)
        siblings = analyzer.index_siblings(sources.rows(), options, args.privileged)

    def keep(number: int) -> bool:
        mine = shard is None or (number - 1) % shard[1] == shard[0]
        return mine and number not in outputs.done

    errors: list[tuple[int, str]] = []
    unknown: dict[str, list[int]] = {}  # keys that are not fields, kept in meta: line numbers
    done, interrupted, broken = 0, False, None
    everything = iter(()) if first is None else itertools.chain([first], rows)
    prepare = file_lines(analyzer, options, args.privileged, unknown, siblings)

    def run(prepared: list[tuple[int, Any]]) -> Iterator[list[tuple[int, Any]]]:
        return analyzer.run_prepared(prepared, lambda n: {"job": {**job, "line": n}})

    try:
        with stop_signals(), tqdm(unit="traj", file=sys.stderr) as bar:
            if cluster is None:
                lines = run_lines(
                    everything, prepare, run, keep=keep, progress=bar.update, window_done=outputs.flush
                )  # whole lines on disk after each window: a killed run loses at most one window
            else:
                from vrollout.cluster.ray import Keep, SiblingPass, Task, cluster_lines

                params = {"options": options, "privileged": args.privileged, "job": job, "siblings": None}
                lines = analyzer.watch(cluster_lines(
                    sources, Task(analyze_lines, params), settings, cluster,
                    keep=Keep(frozenset(outputs.done), shard), unknown=unknown,
                    progress=bar.update, committed=outputs.flush,
                    siblings=SiblingPass(options, args.privileged) if sibling else None,
                ))  # fmt: skip
            for number, result in lines:
                if isinstance(result, VRError):
                    errors.append((number, result.message))
                    continue
                if analyzer.store is not None:
                    analyzer.store.save(result)
                outputs.add(result)
                done += 1
    except KeyboardInterrupt:
        interrupted = True
    except VRError as exc:  # the file itself goes wrong part way (an array's JSON, a Parquet page)
        if type(exc).__name__ == "ModelsNotLoaded":  # --ray: the workers' models; main says it
            raise
        broken = exc.message
    finally:
        with no_interrupts():
            outputs.close()
    with no_interrupts():
        for number, message in sorted(errors):
            print(f"{sources.where(number)}: {message}", file=sys.stderr)
        for warning in say_line_warnings(sources, unknown):
            print(warning, file=sys.stderr)
        name = sources.name if tag is None else f"{sources.name} (shard {tag})"
        outputs.finish(name, sorted(errors), analyzer, settings)
    where = outputs.folder or outputs.path
    total = f"{done} analysed, {len(errors)} failed"
    if outputs.done:
        total += f" ({len(outputs.done)} from the earlier run)"
    if interrupted:
        print(f"interrupted: {total} -> {where}; run again with --resume to go on", file=sys.stderr)
        return INTERRUPTED
    if broken is not None:
        print(f"{total} -> {where}", file=sys.stderr)
        print(
            f"error: {sources.label}: {broken}; the lines before it were analysed (mend the file and run "
            "again with --resume to go on)",
            file=sys.stderr,
        )
        return 2
    print(f"{total} -> {where}" + (f" (shard {tag})" if tag else ""), file=sys.stderr)
    return 1 if errors else 0
