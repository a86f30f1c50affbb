"""`vrollout pedagogical FILE --out DIR`: a pedagogical job without a server.

The file is read as `vrollout analyze` reads it (JSONL, a JSON array, Parquet, a `save_to_disk`
folder or hf://; `--map`, `--from`), each line runs as a pedagogical job's line runs
(`jobs.pedagogical`: the student's own rollout analysed, the pedagogical rollout on the same
contexts), and the records go, as they come, to `report.pedagogical.write_pedagogical`:
rollouts.jsonl, comparison.csv and report.html. The analyses are stored in the database unless
`--no-store` (a record's `student.analysis_id` names one).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vrollout.cli.journal import Journal
from vrollout.config import Settings
from vrollout.errors import VRError
from vrollout.inputs.teacher_context import SiblingIndex
from vrollout.jobs.pedagogical import (
    PreparedLine,
    end_ids,
    line_options,
    parse_sweep,
    pedagogical_options,
    run_line,
    run_lines,
    with_rollout,
)
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.lines import file_lines
from vrollout.pipeline.lines import run_lines as each_line

PEDAGOGICAL_FLAGS = ("threshold", "max_rank", "temperature", "top_p", "seed", "max_new_tokens")


def add_parser(sub: Any, model_flags: Callable[[Any], None], context_flags: Callable[[Any], None]) -> Any:
    """`vrollout pedagogical`'s parser and flags (the CLI's subparsers, its shared model flags and
    teacher-context flags)."""
    p = sub.add_parser("pedagogical", help="pedagogical rollouts for a file of prompts, compared with OPD")
    model_flags(p)
    p.add_argument(
        "file",
        nargs="+",
        help="prompts in any trajectory format (+ privileged, reference_answer; a response is the "
        "student's own rollout, else it generates one): JSONL, JSON, Parquet, a datasets folder, "
        "hf://; or a folder or glob of such files, or several",
    )
    p.add_argument("--split", help="the split of a datasets folder or an hf:// dataset")
    p.add_argument("--map", help="where the fields are: field=column,... e.g. prompt=question")
    p.add_argument("--from", dest="preset", help="a training framework's log: verl | trl | tinker | auto")
    p.add_argument("--out", required=True, help="a folder: rollouts.jsonl, comparison.csv and report.html")
    p.add_argument("--privileged", help="privileged text for lines that carry none")
    context_flags(p)
    p.add_argument("--threshold", type=float, help="the teacher steps in below this probability (0.05)")
    p.add_argument("--max-rank", dest="max_rank", type=int, help="... or above this teacher rank")
    p.add_argument("--temperature", type=float, help="the student's sampling (default 0: greedy)")
    p.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling (default 1)")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="rollout length bound (128)")
    p.add_argument("--sweep", help="thresholds for the interventions-vs-success curve, e.g. 0.01,0.05,0.2")
    p.add_argument("--top-k", dest="top_k", type=int, help="alternatives kept per step of the analyses (5)")
    p.add_argument(
        "--include",
        choices=("successful", "all"),
        default="successful",
        help="which rollouts rollouts.jsonl keeps: those that reached the reference (default) or all",
    )
    p.add_argument("--no-store", action="store_true", help="do not save the analyses to the database")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the lines an earlier (killed or interrupted) run finished (records.jsonl), run the rest",
    )
    from vrollout.cli.analyze import add_cluster_flags

    add_cluster_flags(p)
    return p


def pedagogical_file(args: Any, settings: Settings, analyzer: Analyzer | None = None) -> int:
    """The command: 0 when every line ran, 1 when some failed, 2 when none could."""
    from tqdm import tqdm
    from vrollout.cli.analyze import cluster_of, label, say_line_warnings
    from vrollout.inputs.paths import Sources
    from vrollout.inputs.teacher_context import teacher_options
    from vrollout.report.pedagogical import write_pedagogical

    cluster = cluster_of(args)  # --ray without Ray, or a size below its bound: main's one-line error
    try:
        sources = Sources(args.file, settings, split=args.split, mapping=args.map, preset=args.preset)
        rows = sources.rows()
        first = next(rows, None)  # an unreadable or empty file: said now, before the models load
        context = teacher_options(
            getattr(args, "teacher_context", None), getattr(args, "teacher_template", None)
        )
    except (OSError, VRError) as exc:
        print(f"error: {label(args.file)}: {exc}", file=sys.stderr)
        return 2
    if analyzer is None:
        from vrollout.storage.store import Store

        store = None if args.no_store else Store(settings.database)  # a damaged one fails before loading
        analyzer = Analyzer.from_settings(settings, store)
    try:
        options = pedagogical_options(
            analyzer, sweep=parse_sweep(args.sweep), **{f: getattr(args, f) for f in PEDAGOGICAL_FLAGS}
        )
    except VRError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    siblings, sibling = None, context.get("teacher_context") == "sibling"
    sibling_options = {**context, **line_options(options)}
    if sibling and cluster is None:  # a first pass over the file (inputs.teacher_context); a cluster's own
        siblings = analyzer.index_siblings(sources.rows(), sibling_options, args.privileged)
    journal = Journal(Path(args.out), getattr(args, "resume", False))  # records.jsonl: what --resume reads
    if journal.done:
        print(f"resuming: {len(journal.done)} lines already in {journal.path}", file=sys.stderr)
    everything = iter(()) if first is None else itertools.chain([first], rows)
    everything = (row for row in everything if row[0] not in journal.done)
    errors: list[tuple[int, str]] = []
    unknown: dict[str, list[int]] = {}  # keys that are not fields, kept in meta: line numbers
    stopped: list[str] = []
    done = 0
    with tqdm(unit="line", file=sys.stderr) as bar:

        def records() -> Iterator[dict[str, Any]]:
            nonlocal done
            if cluster is None:
                lines = run_all(analyzer, everything, options, args, unknown, context, siblings, bar.update)
            else:
                from vrollout.cluster.ray import Keep, SiblingPass, Task, cluster_lines

                flags = {f: getattr(args, f) for f in PEDAGOGICAL_FLAGS}
                params = {
                    "flags": flags, "sweep": args.sweep, "top_k": args.top_k,
                    "privileged": args.privileged, "context": context, "siblings": siblings,
                }  # fmt: skip
                lines = cluster_lines(
                    sources, Task(pedagogical_lines, params), settings, cluster,
                    keep=Keep(frozenset(journal.done)), unknown=unknown, progress=bar.update,
                    siblings=SiblingPass(sibling_options, args.privileged) if sibling else None,
                )  # fmt: skip
            try:
                for number, result in lines:
                    if isinstance(result, VRError):
                        errors.append((number, result.message))
                        continue
                    analysis, record = result
                    if analyzer.store is not None:
                        analyzer.store.save(analysis)
                    done += 1
                    yield record
            except VRError as exc:  # the file itself goes wrong part way: the lines before it ran
                stopped.append(exc.message)

        student, teacher = analyzer.pair.student.name, analyzer.pair.teacher.name
        summary = write_pedagogical(
            journal.merged(records()), Path(args.out), include=args.include, end_ids=end_ids(analyzer),
            name=sources.name, student=student, teacher=teacher, settings=settings,
        )  # fmt: skip
    journal.close()
    for number, message in sorted(errors):
        print(f"{sources.where(number)}: {message}", file=sys.stderr)
    for warning in say_line_warnings(sources, unknown):
        print(warning, file=sys.stderr)
    if as_text := summary["prompts_as_text"]:
        print(
            f"{as_text} prompt{'s' if as_text > 1 else ''} (given rendered or as token ids) could not "
            "be given as chat messages of the student's template: their rows in rollouts.jsonl have "
            "prompt null and the exact text in prompt_text (filter them out for a trainer that "
            "applies the chat template)",
            file=sys.stderr,
        )
    earlier = f" ({len(journal.done)} from the earlier run)" if journal.done else ""
    print(f"{done} lines{earlier} -> {args.out}", file=sys.stderr)
    if stopped:
        print(f"error: {sources.label}: {stopped[0]}; the lines before it were run", file=sys.stderr)
        return 2
    return 0 if not errors else (1 if done or journal.done else 2)


def pedagogical_lines(
    analyzer: Analyzer, rows: list[tuple[int, Any]], unknown: dict[str, list[int]], params: dict[str, Any]
) -> Iterator[tuple[int, Any]]:
    """What a cluster worker runs for `pedagogical` (`cluster.ray.Task`): `run_all` over its
    batch, the options made from the command's flags with the worker's own models."""
    options = pedagogical_options(analyzer, sweep=parse_sweep(params["sweep"]), **params["flags"])
    args = SimpleNamespace(top_k=params["top_k"], privileged=params["privileged"])
    return run_all(analyzer, iter(rows), options, args, unknown, params["context"], params["siblings"])


def run_all(
    analyzer: Analyzer,
    rows: Iterator[tuple[int, Any]],
    options: dict[str, Any],
    args: Any,
    unknown: dict[str, list[int]],
    context: dict[str, str],
    siblings: SiblingIndex | None,
    progress: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple[int, tuple[dict[str, Any], dict[str, Any]] | VRError]]:
    """Each line's (analysis, record) or its error, in line order, through the pipeline of files
    of lines (`pipeline.lines`); a file that goes wrong part way raises its error after its
    earlier lines. `unknown`: the keys kept in meta are added (key -> line numbers). `context`:
    the file's teacher context and template for lines that set none; `siblings`: the file's
    sibling index, where they ask for one. Locally a group's rollouts decode together
    (VROLLOUT_PEDAGOGICAL_BATCH); on vLLM, `lines_in_flight` lines run at once."""
    line_opts = {"top_k": args.top_k, **context, **line_options(options)}
    prepare = file_lines(
        analyzer,
        line_opts,
        args.privileged,
        unknown,
        siblings,
        lambda prep: with_rollout(analyzer, prep, options),
    )

    def extra(number: int) -> dict[str, Any]:
        return {"job": {"id": None, "line": number}}

    def one(item: tuple[int, PreparedLine]) -> list[tuple[int, Any]]:
        number, line = item
        try:
            return [(number, run_line(analyzer, number, line, extra(number)))]
        except VRError as exc:
            return [(number, exc)]

    def run(prepared: list[tuple[int, PreparedLine]]) -> Iterator[list[tuple[int, Any]]]:
        if analyzer.lines_in_flight() == 1:  # local: a group's rollouts decode together
            size = analyzer.settings.pedagogical_batch
            for i in range(0, len(prepared), size):
                group = prepared[i : i + size]
                results = run_lines(analyzer, group, [extra(number) for number, _ in group])
                yield list(zip([number for number, _ in group], results, strict=True))
            return
        with ThreadPoolExecutor(analyzer.lines_in_flight(), thread_name_prefix="vrollout-line") as pool:
            yield from pool.map(one, prepared)

    return each_line(rows, prepare, run, progress=progress)
