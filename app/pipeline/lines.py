"""Files of lines: one pipeline from numbered rows to each line's result, for every driver
(`vrollout analyze`, `vrollout localize`, `vrollout pedagogical`, `analyze_many` and the job
runner).

Rows come numbered, an unreadable one as a `LineError`. They are taken a window at a time (bounded
memory: a file is never held whole), each window is prepared (`prepare`: a line's error is its
own, never its neighbours'), its prepared lines run (`run`: in the planned batches, or however the
driver runs them) and each line's result, or its error as a `VRError`, comes out in line order as
soon as every line before it is done. What differs between drivers is passed in: how a window is
prepared and run, which lines to keep, how progress is shown. Unknown keys (kept in `meta`) are
collected by `file_lines` and worded by `key_warnings`.

Torch-free, and no storage: what to keep of a result is the driver's.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from vrollout.errors import BadTrajectory, VRError
from vrollout.inputs.teacher_context import SiblingIndex
from vrollout.inputs.trajectories import LineError
from vrollout.inputs.validation import unknown_key_warnings
from vrollout.schema.requests import AnalyzeRequest

WINDOW = 64  # lines prepared (and sorted into batches) at a time
CLOSE = 0.7  # difflib's similarity for a key to be named as a field it may mean (`reference`: 0.72)

Numbered = tuple[int, Any]
Prepare = Callable[[list[Numbered]], list[tuple[int, Any]]]  # -> (number, prepared line or VRError)
Run = Callable[[list[tuple[int, Any]]], Iterable[list[tuple[int, Any]]]]  # -> groups of (number, result)


def windows(
    rows: Iterable[Numbered], size: int, keep: Callable[[int], bool] | None = None
) -> Iterator[list[Numbered]]:
    """The rows that `keep(number)` accepts (all, without it), `size` readable ones at a time
    (unreadable lines ride along free). A file that goes wrong part way gives the window read
    so far, then its error."""
    window: list[Numbered] = []
    objects = 0
    try:
        for number, item in rows:
            if keep is not None and not keep(number):
                continue
            window.append((number, item))
            objects += not isinstance(item, LineError)
            if objects >= size:
                yield window
                window, objects = [], 0
    except VRError:
        if window:  # the rows read before it still run
            yield window
        raise
    if window:
        yield window


def run_lines(
    rows: Iterable[Numbered],
    prepare: Prepare,
    run: Run,
    *,
    window: int = WINDOW,
    keep: Callable[[int], bool] | None = None,
    progress: Callable[[int], None] = lambda n: None,
    window_done: Callable[[], None] = lambda: None,
) -> Iterator[tuple[int, Any]]:
    """Each kept line's (number, result), or (number, VRError) for a line that could not be read,
    prepared or run, in line order. `prepare(window)`: each readable line of a window as
    (number, prepared line or VRError), in any order. `run(prepared)`: the prepared lines in groups
    of (number, result or VRError), in any order; a line it never reports (a job cancelled mid-line)
    is left out. `progress(n)`: n more lines finished. `window_done()`: every line of a window was
    yielded (and handled by the caller). A `VRError` of the file itself (a broken array, a Parquet
    page) is raised after the lines before it."""
    for lines in windows(rows, window, keep):
        results = InOrder([number for number, _ in lines])
        readable = []
        for number, item in lines:
            if isinstance(item, LineError):
                results.add(number, BadTrajectory(item.error))
            else:
                readable.append((number, item))
        prepared = []
        for number, result in prepare(readable) if readable else []:
            if isinstance(result, VRError):
                results.add(number, result)
            else:
                prepared.append((number, result))
        progress(len(lines) - len(prepared))
        yield from results.ready()
        for group in run(prepared) if prepared else []:
            for number, result in group:
                results.add(number, result)
            progress(len(group))
            yield from results.ready()
        yield from results.rest()
        window_done()


class InOrder:
    """A window's results, given back in line order as soon as every line before is in."""

    def __init__(self, order: list[int]) -> None:
        self.order = order
        self.next = 0  # order[next]: the line to give next
        self.results: dict[int, Any] = {}

    def add(self, number: int, result: Any) -> None:
        self.results[number] = result

    def ready(self) -> Iterator[tuple[int, Any]]:
        while self.next < len(self.order) and self.order[self.next] in self.results:
            number = self.order[self.next]
            self.next += 1
            yield number, self.results.pop(number)

    def rest(self) -> Iterator[tuple[int, Any]]:
        """What came in after a line that never did (`run` left it out), in line order."""
        for number in self.order[self.next :]:
            if number in self.results:
                yield number, self.results.pop(number)
        self.next = len(self.order)


def file_lines(
    analyzer: Any,
    options: dict[str, Any],
    privileged: str | None,
    unknown: dict[str, list[int]],
    siblings: SiblingIndex | None = None,
    then: Callable[[Any], Any] | None = None,
) -> Prepare:
    """`prepare` for the lines of a file (`Analyzer.prepare_lines`: the file's options filled in,
    keys that are not fields kept in meta and added to `unknown` as key -> line numbers, a sibling
    picked from `siblings` where a line asks for one). `then(prepared)`: more to check per line
    (a pedagogical rollout); its error is the line's."""

    def prepare(window: list[Numbered]) -> list[tuple[int, Any]]:
        prepared, failed = analyzer.prepare_lines(window, options, privileged, unknown, siblings)
        out: list[tuple[int, Any]] = list(failed)
        for number, prep in prepared:
            try:
                out.append((number, prep if then is None else then(prep)))
            except VRError as exc:
                out.append((number, exc))
        return out

    return prepare


def key_warnings(
    unknown: Mapping[str, list[int]], fields: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """One warning per unknown key (`unknown_key_warnings`: the lines that carry it, how many),
    naming the field it may have meant when one is close (`difflib`): a near miss close enough
    to be sure of is the line's error already (`validation.suggest`), this catches the rest,
    e.g. `reference` for `reference_answer`."""
    names = list(AnalyzeRequest.model_fields if fields is None else fields)
    found = unknown_key_warnings(unknown)
    for warning in found:
        if close := difflib.get_close_matches(warning["key"], names, n=1, cutoff=CLOSE):
            warning["warning"] += f" (did you mean `{close[0]}`?)"
    return found


def say_warnings(where: str, unknown: Mapping[str, list[int]]) -> list[str]:
    """The CLI's lines for the unknown keys of file `where`: `FILE:LINE: warning: ... (N lines)`."""
    out = []
    for warning in key_warnings(unknown):
        count = f"{warning['count']} line{'s' if warning['count'] != 1 else ''}"
        out.append(f"{where}:{warning['lines'][0]}: warning: {warning['warning']} ({count})")
    return out
