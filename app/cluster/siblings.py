"""The sibling teacher context's first pass on the cluster (docs/ray.md).

`--teacher-context sibling` needs the whole file before any line runs: each line's sibling is the
first successful response, in file order, among the other lines with its prompt
(inputs.teacher_context). The costly part of that pass is per line (validating it, and judging its
response against its reference: math-verify), so it runs as Ray Data tasks: `judge` maps each
batch of lines to one small row per valid line (its prompt's key, whether its response is
successful, and that response only when it is). The driver folds those rows, in line order, into
the `SiblingIndex` that `Analyzer.index_siblings` would build from the same lines (`fold`), and
sends it to the workers with their task. No models: validation needs only the settings.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vrollout.errors import VRError

if TYPE_CHECKING:
    from vrollout.config import Settings
    from vrollout.inputs.teacher_context import SiblingIndex

JUDGED = ("number", "key", "ok", "id", "response")  # a judged line's row


def judged(settings: Settings, rows: list[tuple[int, Any]], options: dict[str, Any], privileged: str | None):
    """Each valid line's (number, prompt key, successful, id, response if successful), as
    `Analyzer.index_siblings` reads a line (`Analyzer._file_line`: a localization line's shape,
    keys kept in meta, the file's options filled in). Bad lines are skipped: they are refused with
    their reason when they are prepared."""
    from vrollout.inputs.teacher_context import prompt_key, successful
    from vrollout.inputs.trajectories import to_trajectory
    from vrollout.inputs.validation import open_keys, request_models, validate
    from vrollout.metrics.localization import is_localization_line, localization_line
    from vrollout.pipeline.analyzer import with_defaults

    request = request_models(settings).analyze
    for number, obj in rows:
        try:
            if is_localization_line(obj):
                obj = localization_line(obj)
            line, _ = open_keys(obj, request)
            traj = to_trajectory(validate(request, with_defaults(line, options, privileged)))
        except VRError:
            continue
        key = prompt_key(traj)
        if key is None:
            continue  # a prompt of token ids: never compared (SiblingIndex.add)
        ok = successful(traj, settings.math_verify_timeout_s)
        yield number, key, ok, traj.id, traj.response_text if ok else None


def judge(batch: Any, settings: Settings, options: dict[str, Any], privileged: str | None) -> Any:
    """`map_batches`' function: a batch of lines (cluster.ray.COLUMNS) -> its judged rows."""
    import pyarrow as pa

    numbers, texts, errors = (batch.column(n).to_pylist() for n in ("number", "row", "error"))
    rows = [
        (n, json.loads(t))
        for n, t, e in zip(numbers, texts, errors, strict=True)
        if t is not None and e is None
    ]
    out: dict[str, list[Any]] = {name: [] for name in JUDGED}
    for row in judged(settings, rows, options, privileged):
        for name, value in zip(JUDGED, row, strict=True):
            out[name].append(value)
    schema = pa.schema(
        [
            ("number", pa.int64()),
            ("key", pa.string()),
            ("ok", pa.bool_()),
            ("id", pa.string()),
            ("response", pa.string()),
        ]
    )
    return pa.table(out, schema=schema)


def fold(rows: Any, deadline_s: float) -> SiblingIndex:
    """The index from judged rows in line order: `SiblingIndex.add`'s rule (without a budget, as
    the file commands build it), the judging done already."""
    from vrollout.inputs.teacher_context import KEPT, Sibling, SiblingIndex

    index = SiblingIndex(verdict_deadline_s=deadline_s)
    for number, key, ok, line_id, response in rows:
        index.seen[key] = index.seen.get(key, 0) + 1
        kept = index.kept.setdefault(key, [])
        if ok and len(kept) < KEPT and all(s.response != response for s in kept):
            kept.append(Sibling(number, line_id, response))
    return index


def index_on_cluster(
    ray: Any, lines: Any, settings: Settings, batch_size: int, options: dict[str, Any], privileged: str | None
) -> SiblingIndex:
    """The sibling index of a Ray dataset of lines, judged by Ray Data tasks, folded here."""
    judgedset = lines.map_batches(
        judge,
        fn_kwargs={"settings": settings, "options": options, "privileged": privileged},
        batch_size=batch_size,
        batch_format="pyarrow",
    )

    def rows() -> Any:
        for batch in judgedset.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from zip(*(batch.column(n).to_pylist() for n in JUDGED), strict=True)

    return fold(rows(), settings.math_verify_timeout_s)
