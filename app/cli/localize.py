"""`vrollout localize FILE --out DIR`: replay ProcessBench-shaped lines, score every step, and
measure how well each scorer finds the first wrong step (docs/metrics.md, "Error localization").

The replays are the ordinary analyses (`pipeline.lines.run_lines`, batched); the
scoring and the metrics add no forward pass. Recovery (a teacher run to the end from many
prefixes) is the one costly extra, run only when its scorer is asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory, TooLong, VRError
from vrollout.inputs.trajectories import parse_file
from vrollout.metrics.localization import is_localization_line
from vrollout.metrics.localization_eval import Setup
from vrollout.pipeline.lines import file_lines, run_lines

NOT_LOCALIZATION = 'not a localization line: give "steps": [str] and "label": int'

if TYPE_CHECKING:
    from vrollout.config import Settings
    from vrollout.pipeline.analyzer import Analyzer


@dataclass
class Replayed:
    """The analyses of a file's localization lines (in line order) and the lines that failed."""

    analyses: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    unknown: dict[str, list[int]] = field(default_factory=dict)


def read_lines(path: Path, settings: Settings) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """A file's numbered JSON lines and the lines that do not decode (the upload's limits)."""
    limit = settings.max_upload_bytes
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLong(f"the file is over the limit of {limit} bytes (VROLLOUT_MAX_UPLOAD_BYTES)")
    lines, bad = parse_file(data, settings.max_lines_per_job, settings.max_line_bytes)
    return lines, [(e.line, e.error) for e in bad]


def replay(
    analyzer: Analyzer,
    lines: list[tuple[int, Any]],
    options: dict[str, Any],
    privileged: str | None,
    advance: Callable[[int], None] = lambda n: None,
) -> Replayed:
    """The analyses of the lines that carry steps (`Analyzer.prepare_line` makes each the
    trajectory of its joined steps), through the pipeline of files of lines (`pipeline.lines`:
    windows, planned batches, line order). `advance(n)`: n more lines finished (a progress bar)."""
    out = Replayed()
    params = {"options": options, "privileged": privileged}
    collect(out, replay_lines(analyzer, lines, out.unknown, params, advance))
    return out


def collect(out: Replayed, results: Iterable[tuple[int, Any]]) -> None:
    for number, result in results:
        if isinstance(result, VRError):
            out.errors.append((number, result.message))
        else:
            out.analyses.append((number, result))


def replay_lines(
    analyzer: Analyzer,
    lines: Iterable[tuple[int, Any]],
    unknown: dict[str, list[int]],
    params: dict[str, Any],
    advance: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple[int, Any]]:
    """Each line's (number, analysis or VRError), in line order; also what a cluster worker runs
    for `localize` (`cluster.ray.Task`). `params`: options and privileged text."""
    files = file_lines(analyzer, params["options"], params["privileged"], unknown)

    def prepare(window: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        steps = [(number, obj) for number, obj in window if is_localization_line(obj)]
        others = [
            (number, BadTrajectory(NOT_LOCALIZATION))
            for number, obj in window
            if not is_localization_line(obj)
        ]
        return others + (files(steps) if steps else [])

    def run(prepared: list[tuple[int, Any]]) -> Iterator[list[tuple[int, Any]]]:
        return analyzer.run_prepared(prepared, lambda n: {"job": {"id": None, "line": n}})

    return run_lines(lines, prepare, run, progress=advance)


def read_sources(given: Any, settings: Settings) -> tuple[list[tuple[int, Any]], list[tuple[int, str]], Any]:
    """The numbered lines of FILE... and the lines that do not decode, and the `Sources` that name
    them: one JSONL file as before (`read_lines`: the upload's limits), else a folder, a glob or
    several files, each read as `vrollout analyze` reads it."""
    from vrollout.inputs.paths import Sources
    from vrollout.inputs.trajectories import LineError

    sources = Sources(given, settings)
    if not sources.several and Path(sources.paths[0]).is_file():
        lines, errors = read_lines(Path(sources.paths[0]), settings)
        return lines, errors, sources
    lines, errors = [], []
    for number, row in sources.rows():
        if isinstance(row, LineError):
            errors.append((number, row.error))
        else:
            lines.append((number, row))
    return lines, errors, sources


def localize_file(args: Any, settings: Settings, analyzer: Analyzer | None = None) -> int:
    """The command: 0 when every line was scored, 1 when some failed, 2 when nothing could be.
    `analyzer`: the models to use (default: load the ones `settings` name)."""
    from tqdm import tqdm
    from vrollout.cli.analyze import cluster_of, label, say_line_warnings
    from vrollout.pipeline.analyzer import Analyzer
    from vrollout.report.localization import localization_result, write_folder

    cluster = cluster_of(args)  # --ray without Ray, or a size below its bound: main's one-line error
    try:
        lines, errors, sources = read_sources(args.file, settings)
    except (OSError, VRError) as exc:
        print(f"error: {label(args.file)}: {exc}", file=sys.stderr)
        return 2
    if analyzer is None:
        from vrollout.storage.store import Store

        store = None if args.no_store else Store(settings.database)  # a damaged one fails before loading
        analyzer = Analyzer.from_settings(settings, store)
    options = {
        "top_k": args.top_k,
        "recovery": args.recovery,
        "recovery_max_new_tokens": args.recovery_max_new_tokens,
    }
    with tqdm(total=len(lines), unit="line", file=sys.stderr) as bar:
        if cluster is None:
            done = replay(analyzer, lines, options, args.privileged, bar.update)
        else:
            done = replay_on_cluster(lines, options, args.privileged, settings, cluster, bar.update)
    errors = sorted(errors + done.errors)
    for number, message in errors:
        print(f"{sources.where(number)}: {message}", file=sys.stderr)
    for warning in say_line_warnings(sources, done.unknown):
        print(warning, file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "analyses.jsonl").open("w") as f:  # first: the costly part is kept whatever follows
        for _, analysis in done.analyses:
            f.write(json.dumps(analysis) + "\n")
            if analyzer.store is not None:
                analyzer.store.save(analysis)
    setup = Setup(folds=args.folds, seed=args.seed, bootstrap=args.bootstrap)
    try:
        result = localization_result(
            [a for _, a in done.analyses], analyzer.pair.student.tokenizer, args.recovery, setup
        )
    except VRError as exc:
        print(f"error: {args.file}: {exc.message}", file=sys.stderr)
        return 2
    write_folder(out, sources.name, errors, result, analyzer, settings)
    print(result.headline(), file=sys.stderr)
    print(f"{len(done.analyses)} scored, {len(errors)} failed -> {out}", file=sys.stderr)
    return 1 if errors else 0


def replay_on_cluster(
    lines: list[tuple[int, Any]],
    options: dict[str, Any],
    privileged: str | None,
    settings: Settings,
    cluster: Any,
    advance: Callable[[int], None],
) -> Replayed:
    """`replay` on a Ray cluster (`cluster.ray`): the lines, read here, go to the workers in
    batches; the analyses come back in line order."""
    from vrollout.cluster.ray import Task, run_rows

    out = Replayed()
    task = Task(replay_lines, {"options": options, "privileged": privileged})
    collect(out, run_rows(lines, task, settings, cluster, unknown=out.unknown, progress=advance))
    return out


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def add_parser(sub: Any, model_flags: Callable[[Any], None]) -> Any:
    """`vrollout localize`'s parser and flags (the CLI's subparsers, and its shared model flags)."""
    p = sub.add_parser("localize", help="does the teacher's signal point at the first wrong step?")
    model_flags(p)
    p.add_argument(
        "file",
        nargs="+",
        help='JSONL of ProcessBench-shaped lines: a prompt, "steps": [str], "label": int (or a folder, '
        "a glob or several files of them)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="a folder: metrics.json, predictions.jsonl, analyses.jsonl and report.html (opens offline)",
    )
    p.add_argument("--privileged", help="privileged text for lines that carry none")
    p.add_argument("--top-k", dest="top_k", type=int, help="default 5")
    p.add_argument(
        "--recovery",
        action="store_true",
        help="also the recovery_drop scorer (a teacher run from many prefixes: costly; lines need "
        "reference_answer)",
    )
    p.add_argument("--recovery-max-new-tokens", dest="recovery_max_new_tokens", type=int, default=64)
    p.add_argument(
        "--folds", type=_at_least(2), default=Setup.folds, help="cross-validation folds over problems"
    )
    p.add_argument("--seed", type=_at_least(0), default=Setup.seed, help="folds and bootstrap resamples")
    p.add_argument(
        "--bootstrap", type=_at_least(0), default=Setup.bootstrap, help="resamples per 95%% interval"
    )
    p.add_argument("--no-store", action="store_true", help="do not save to the database")
    from vrollout.cli.analyze import add_cluster_flags

    add_cluster_flags(p)
    return p
