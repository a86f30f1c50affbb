"""Where trajectories come from: JSONL, a JSON array, Parquet, an HF `datasets` folder
(`save_to_disk`) or a Hub dataset (`hf://datasets/ORG/NAME`), each row renamed by a column
mapping (`--map`) and a framework preset (`--from`) before the usual validation.

`iter_rows` yields `(row number, dict)` or `(row number, LineError)`, one row at a time: a
Parquet file is read a batch at a time, a JSONL file a line at a time and a JSON array an
item at a time (`inputs.array_stream`), so memory stays bounded whatever the size. Knows nothing
about models or HTTP; pyarrow and `datasets` are imported only when such a source is read.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory, TooLong, VRError
from vrollout.inputs.array_stream import iter_array, read_array
from vrollout.inputs.trajectories import LineError, _over, check_encoding, decode_line

if TYPE_CHECKING:
    from vrollout.config import Settings

Row = tuple[int, "dict[str, Any] | LineError"]
HUB = "hf://datasets/"
PARQUET_MAGIC = b"PAR1"
PARQUET_ROWS = 64  # rows a Parquet batch reads at a time (text as dictionaries: their sizes first)
DECODED_AT_ONCE = 16 << 20  # bytes of rows turned into Python values at once (a bigger row: alone)
MAP_FIELDS = (  # what a column can be mapped to: the line fields of docs/formats.md
    "prompt", "response", "messages", "completion", "prompt_ids", "response_ids",
    "teacher_prompt_ids", "privileged", "id", "reference_answer", "meta", "rendered", "score",
    "correct", "step", "feedback", "teacher_context", "teacher_template",
)  # fmt: skip


def iter_rows(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str,
    settings: Settings,
    split: str | None = None,
    mapping: str | Mapping[str, str] | None = None,
    preset: str | None = None,
) -> Iterator[Row]:
    """The rows of `source`: an upload's bytes (JSONL, JSON array or Parquet, by content), a
    path (a file, or a `save_to_disk` folder) or `hf://datasets/ORG/NAME` (`split`). Each row
    is renamed by `mapping` (our field -> their column) and then by `preset` (`"auto"`: found
    from the first row's columns). The options are checked now (a `BadTrajectory` before any
    row is read); a problem of one row is that row's `LineError`; a file that cannot be read
    at all raises. Uploads (bytes) keep the server's limits (lines per job, bytes per line);
    a path keeps the per-line limit only, since it is read lazily."""
    fields = parse_mapping(mapping)
    check_preset(preset)
    if preset in ("tinker", "auto") and (episodes := _logtree_rows(source)) is not None:
        if isinstance(source, bytes) and len(episodes) > settings.max_lines_per_job:
            raise TooLong(
                f"more than the limit of {settings.max_lines_per_job} lines (VROLLOUT_MAX_LINES_PER_JOB)"
            )
        return map_rows(enumerate(episodes, 1), fields, "tinker")  # numbered by episode
    return map_rows(_read(source, name, settings, split), fields, preset)


def _logtree_rows(source: str | os.PathLike[str] | bytes) -> list[dict[str, Any]] | None:
    """The episodes of a tinker-cookbook logtree trace (`train_logtree.json`: one JSON object
    whose first keys are `title`, `started_at`, `path`, `root`), as the `tinker` preset's rows
    (`inputs.presets.tinker_rows`); None for any other source."""
    if isinstance(source, bytes):
        head = source[: 1 << 16]
    else:
        text = os.fspath(source)
        if text.startswith("hf://") or not Path(text).is_file():
            return None
        with open(text, "rb") as f:
            head = f.read(1 << 16)
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") or b'"root"' not in head:
        return None
    data = source if isinstance(source, bytes) else Path(os.fspath(source)).read_bytes()
    try:
        trace = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):  # JSONL, or not JSON: read as before
        return None
    except RecursionError:  # nested past what the JSON reader follows (a trace is a few levels)
        raise BadTrajectory(
            "the file is nested too deep to read as a tinker-cookbook logtree trace"
        ) from None
    if not isinstance(trace, dict) or not isinstance(trace.get("root"), dict):
        return None
    from vrollout.inputs.presets import tinker_rows

    return tinker_rows(trace)


def _read(
    source: str | os.PathLike[str] | bytes, name: str, settings: Settings, split: str | None
) -> Iterator[Row]:
    if isinstance(source, bytes):
        if split is not None:
            raise BadTrajectory("split applies to a datasets folder or an hf:// dataset", field="split")
        if source.startswith(PARQUET_MAGIC):
            return _parquet(
                source, name, settings.max_lines_per_job, settings.max_line_bytes, settings.max_upload_bytes
            )
        return _parsed(source, settings)
    text = os.fspath(source)
    if text.startswith("hf://"):
        return _hub(text, split, settings)
    path = Path(text)
    if path.is_dir():
        return _saved(path, split)
    if split is not None:
        raise BadTrajectory("split applies to a datasets folder or an hf:// dataset", field="split")
    with path.open("rb") as f:  # OSError (missing, unreadable) goes to the caller as it is
        head = f.read(4)
    if head == PARQUET_MAGIC:
        return _parquet(path, name, None, settings.max_line_bytes, None)
    return _lines(path, settings)


def _parsed(data: bytes, settings: Settings) -> Iterator[Row]:
    """An upload, a row at a time (JSONL a line, a JSON array an item: `inputs.array_stream`), so
    that no reader holds its rows: `parse_file`'s rows, limits and messages, in line order."""
    check_encoding(data)
    body = data.removeprefix(b"\xef\xbb\xbf")
    if not body.strip():
        raise BadTrajectory("the file is empty")
    max_lines = settings.max_lines_per_job
    if body.lstrip().startswith(b"["):
        return _at_most(read_array(io.BytesIO(body), settings.max_line_bytes), max_lines, "trajectories")
    lines = (
        (number, decode_line(number, raw, settings.max_line_bytes))
        for number, raw in enumerate(io.BytesIO(body), start=1)
        if raw.strip()
    )
    return _at_most(lines, max_lines, "lines")


def _at_most(rows: Iterator[Row], max_lines: int, what: str) -> Iterator[Row]:
    for count, row in enumerate(rows, start=1):
        if count > max_lines:
            raise TooLong(f"more than the limit of {max_lines} {what} (VROLLOUT_MAX_LINES_PER_JOB)")
        yield row


def _lines(path: Path, settings: Settings) -> Iterator[Row]:
    """A JSONL file one line at a time (a line over the limit is skipped unread, so one huge
    line never fills memory); a JSON array a piece at a time too (`inputs.array_stream`: one
    item per number, an item over the limit scanned past, never held whole)."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    check_encoding(head)
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not first:
        raise BadTrajectory("the file is empty")
    if first.startswith(b"["):
        return iter_array(path, settings.max_line_bytes)
    return _jsonl(path, settings.max_line_bytes, head.startswith(b"\xef\xbb\xbf"))


def _jsonl(path: Path, max_line_bytes: int, bom: bool) -> Iterator[Row]:
    cap = max_line_bytes + 3  # room for "\r\n" and one byte more
    with path.open("rb") as f:
        f.seek(3 if bom else 0)
        number = 0
        while raw := f.readline(cap):
            number += 1
            if len(raw) == cap and not raw.endswith(b"\n"):  # over the limit: skip the rest unread
                size = len(raw)
                while (more := f.readline(1 << 20)) and not more.endswith(b"\n"):
                    size += len(more)
                size += len(more.rstrip(b"\r\n"))
                yield number, LineError(number, _over(size, max_line_bytes, "line"))
            elif raw.strip():
                yield number, decode_line(number, raw, max_line_bytes)


def _parquet(
    source: Path | bytes, name: str, max_rows: int | None, max_row_bytes: int, max_file_bytes: int | None
) -> Iterator[Row]:
    """A Parquet file a batch of rows at a time; a row's number is its 1-based index. Decoded
    bytes are capped before anything is decoded into Python values: the file's uncompressed
    size from its metadata against `max_file_bytes` (uploads), then per batch each row's size
    as decoded (`row_sizes`, from the lengths of its values: a dictionary value repeated over
    many rows counts once per row, and is never copied out to measure it). A row over
    `max_row_bytes` is that row's error; decoded rows past `max_file_bytes` end the file (413)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        file = pq.ParquetFile(reader)
        texts = [c.path for c in file.schema if c.physical_type == "BYTE_ARRAY" and _text_leaf(c)]
        if texts:  # text read as dictionaries: a repeated value is held once, not once per row
            file = pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source,
                                  read_dictionary=texts)  # fmt: skip
    except (pa.ArrowException, OSError) as exc:
        raise BadTrajectory(f"{name}: not a readable Parquet file ({exc})") from None
    meta = file.metadata
    if max_rows is not None and meta.num_rows > max_rows:
        raise TooLong(f"more than the limit of {max_rows} lines (VROLLOUT_MAX_LINES_PER_JOB)")
    if max_file_bytes is not None:
        stored = sum(
            meta.row_group(i).column(j).total_uncompressed_size
            for i in range(meta.num_row_groups)
            for j in range(meta.num_columns)
        )
        if stored > max_file_bytes:
            raise TooLong(_decoded_over(name, stored, max_file_bytes, "uncompressed"))
    # Row group by row group, so that a damaged one is named by the row it starts at
    groups = (file.iter_batches(batch_size=PARQUET_ROWS, row_groups=[i]) for i in range(file.num_row_groups))
    batches = (batch for group in groups for batch in group)
    return _batches(batches, f"{name}: Parquet", max_row_bytes, (name, max_file_bytes))


def _text_leaf(column: Any) -> bool:
    """A BYTE_ARRAY column that Arrow reads as text or bytes (not, say, a decimal)."""
    return str(column.logical_type) in ("None", "String", "Json", "Enum", "BSON")


def _decoded_over(name: str, size: int, limit: int, how: str) -> str:
    return (
        f"{name}: the Parquet file is over {size if how == 'uncompressed' else limit} bytes "
        f"{how}, over the limit of {limit} (VROLLOUT_MAX_UPLOAD_BYTES)"
    )


def row_sizes(array: Any) -> Any:
    """Each row's size as decoded, in bytes (a numpy array): text and bytes by length, a list
    by its elements, a struct by its fields, a dictionary by the size of the value each row
    points at; others by their width. Computed from lengths and offsets: nothing is copied out."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(kind):
        values = row_sizes(array.dictionary)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        sizes = values[indices] if len(values) else np.zeros(len(array))
        return np.where(array.is_null().to_numpy(zero_copy_only=False), 0, sizes)
    if (
        pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_string(kind)
        or (pa.types.is_large_binary(kind))
    ):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    if (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or (pa.types.is_map(kind))
    ):
        flat = array.flatten()
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=row_sizes(flat), minlength=len(array)) + 8
    if pa.types.is_struct(kind):
        fields = [row_sizes(field) for field in array.flatten()]
        return np.sum(fields, axis=0) if fields else np.zeros(len(array))
    width = kind.bit_width // 8 if pa.types.is_primitive(kind) and kind.bit_width >= 8 else 8
    return np.full(len(array), float(width))


def _batches(
    batches: Iterable[Any],
    what: str,
    max_row_bytes: int | None = None,
    file_cap: tuple[str, int | None] = ("", None),
) -> Iterator[Row]:
    """Rows of Arrow record batches, numbered from 1, as plain JSON values. A batch that
    cannot be decoded (a damaged file) stops the read with the rows it starts at. With
    `max_row_bytes`, a row over it (as decoded, `row_sizes`) is that row's error and is never
    decoded; `file_cap` (name, bytes): decoded rows past it end the file (413). Rows become
    Python values a slice at a time (at most DECODED_AT_ONCE bytes)."""
    import numpy as np
    import pyarrow as pa

    name, max_file_bytes = file_cap
    number = 0
    total = 0.0
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise BadTrajectory(f"{what}: cannot read the rows from row {number + 1} on ({exc})") from None
        if max_row_bytes is None:
            for row in batch.to_pylist():
                number += 1
                yield number, plain(row)
            continue
        sizes = (
            np.sum([row_sizes(column) for column in batch.columns], axis=0)
            if batch.num_columns
            else (np.zeros(batch.num_rows))
        )
        start = 0
        while start < batch.num_rows:
            end, held = start, 0.0
            while end < batch.num_rows and (end == start or held + sizes[end] <= DECODED_AT_ONCE):
                held += sizes[end] if sizes[end] <= max_row_bytes else 0
                end += 1
            total += held
            if max_file_bytes is not None and total > max_file_bytes:
                raise TooLong(_decoded_over(name, 0, max_file_bytes, "decoded"))
            for offset, row in enumerate(_slice_rows(batch, start, end, sizes, max_row_bytes)):
                number += 1
                if row is None:
                    size = int(sizes[start + offset])
                    yield number, LineError(number, _over(size, max_row_bytes, "row (decoded)"))
                else:
                    yield number, plain(row)
            start = end


def _slice_rows(batch: Any, start: int, end: int, sizes: Any, limit: int) -> list[Any]:
    """Rows start..end of the batch as Python values; None for a row over `limit` (not decoded)."""
    keep = [i for i in range(start, end) if sizes[i] <= limit]
    if len(keep) == end - start:
        return batch.slice(start, end - start).to_pylist()
    decoded = iter(batch.take(keep).to_pylist()) if keep else iter(())
    return [next(decoded) if sizes[i] <= limit else None for i in range(start, end)]


def _saved(folder: Path, split: str | None) -> Iterator[Row]:
    """A folder written by `datasets` (`Dataset.save_to_disk`: state.json and Arrow stream
    files; `DatasetDict.save_to_disk`: dataset_dict.json and one such folder per split)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            given = "give --split" if split is None else f"no split {split!r}"
            raise BadTrajectory(f"{folder}: {given}; its splits: {', '.join(splits)}", field="split")
        folder = folder / split
    elif split is not None:
        raise BadTrajectory(f"{folder}: a single dataset, it has no splits", field="split")
    state = folder / "state.json"
    if not state.is_file():
        raise BadTrajectory(
            f"{folder}: a folder must be one written by datasets' save_to_disk (no state.json or "
            "dataset_dict.json in it)"
        )
    try:
        files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadTrajectory(f"{state}: not a datasets state file ({exc})") from None
    return _arrow_files(files, str(folder))


def _arrow_files(files: list[Path], name: str) -> Iterator[Row]:
    import pyarrow as pa

    offset = 0
    for path in files:
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))
        except (pa.ArrowException, OSError) as exc:
            raise BadTrajectory(f"{name}: cannot read {path.name} ({exc})") from None
        count = 0
        for count, row in _batches(reader, f"{name}/{path.name}"):
            yield offset + count, row
        offset += count


def _hub(url: str, split: str | None, settings: Settings) -> Iterator[Row]:
    """A dataset on the Hub, streamed (nothing is downloaded whole). Where the Hub cannot be
    reached, a clear error naming the dataset, after at most VROLLOUT_HUB_TIMEOUT_S."""
    repo = url.removeprefix(HUB).strip("/")
    if not url.startswith(HUB) or repo.count("/") != 1 or "" in repo.split("/"):
        raise BadTrajectory(f"{url}: a Hub dataset is written hf://datasets/ORG/NAME")
    if split is None:
        raise BadTrajectory(f"{url}: give --split (e.g. train)", field="split")
    timeout = str(max(1, math.ceil(settings.hub_timeout_s)))  # huggingface_hub reads whole seconds
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", timeout)  # read when huggingface_hub is imported
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", timeout)
    try:
        import datasets
    except ImportError:
        raise BadTrajectory(f"{url}: reading the Hub needs `pip install datasets`") from None
    found: list[Any] = []

    def first_row() -> None:  # on a thread, so that retries against an unreachable Hub cannot hang us
        try:
            rows = enumerate(datasets.load_dataset(repo, split=split, streaming=True), start=1)
            found.append((rows, next(rows, None)))
        except Exception as exc:  # the Hub's errors are many (offline, missing, gated): all the source's
            found.append(exc)

    thread = threading.Thread(target=first_row, name="vrollout-hub", daemon=True)
    thread.start()
    thread.join(settings.hub_timeout_s)
    where = f"cannot read the dataset {repo!r} (split {split!r}) from the Hub"
    if not found:
        raise BadTrajectory(
            f"{where}: no answer within {settings.hub_timeout_s:g} s (VROLLOUT_HUB_TIMEOUT_S)"
        )
    if isinstance(found[0], Exception):
        raise BadTrajectory(f"{where}: {found[0]}")
    rows, head = found[0]
    if head is None:
        return iter(())
    return _chain_plain(head, rows)


def _chain_plain(head: tuple[int, Any], rows: Iterator[tuple[int, Any]]) -> Iterator[Row]:
    yield head[0], plain(head[1])
    for number, row in rows:
        yield number, plain(row)


def plain(value: Any) -> Any:
    """A value read from Arrow, numpy or pandas as a plain JSON value (lists, dicts, str, int,
    float, bool, None)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    if hasattr(value, "as_py"):  # an Arrow scalar
        return plain(value.as_py())
    if isinstance(value, Iterable):
        return [plain(v) for v in value]
    return str(value)


def parse_mapping(mapping: str | Mapping[str, str] | None) -> dict[str, str]:
    """`prompt=question,privileged=solution` (or a dict) as {our field: their column}, each
    target a line field (a near miss is named), each field given once."""
    if mapping is None:
        return {}
    if isinstance(mapping, str):
        pairs: list[tuple[str, str]] = []
        for part in (p.strip() for p in mapping.split(",")):
            if not part:
                continue
            field, eq, column = (s.strip() for s in part.partition("="))
            if not eq or not field or not column:
                raise BadTrajectory(
                    f"map: {part!r} is not field=column (e.g. prompt=question,reference_answer=answer)",
                    field="map",
                )
            pairs.append((field, column))
    elif isinstance(mapping, Mapping):
        pairs = [(str(k), v) for k, v in mapping.items()]
    else:
        raise BadTrajectory("map must be text field=column,... or a dict", field="map")
    fields: dict[str, str] = {}
    for field, column in pairs:
        if not isinstance(column, str) or not column:
            raise BadTrajectory(f"map: {field}'s column must be a non-empty name", field="map")
        if field not in MAP_FIELDS:
            near = _near(field)
            hint = f" (did you mean {near!r}?)" if near else f"; the fields: {', '.join(MAP_FIELDS)}"
            raise BadTrajectory(f"map: {field!r} is not a line field{hint}", field="map")
        if field in fields:
            raise BadTrajectory(f"map: {field!r} is given twice", field="map")
        fields[field] = column
    return fields


def _near(field: str) -> str | None:
    from vrollout.inputs.validation import suggest
    from vrollout.schema.requests import AnalyzeRequest

    near = suggest(field, AnalyzeRequest)
    if near in MAP_FIELDS:
        return near
    return next((f for f in MAP_FIELDS if f == field.strip().lower().replace("-", "_")), None)


def check_preset(preset: str | None) -> None:
    """`--from`: one of the presets of `inputs.presets`, or `auto`."""
    if preset is None or preset == "auto":
        return
    names = _presets()[0]
    if preset not in names:
        known = ", ".join((*names, "auto"))
        raise BadTrajectory(f"from: unknown preset {preset!r}; the presets: {known}", field="from")


def _presets() -> tuple[tuple[str, ...], Any, Any]:
    try:
        from vrollout.inputs.presets import PRESETS, apply_preset, detect_preset
    except ImportError:  # a build without framework presets: every name is unknown
        return (), None, None
    return tuple(PRESETS), apply_preset, detect_preset


def map_rows(rows: Iterable[Row], fields: dict[str, str], preset: str | None) -> Iterator[Row]:
    """Each row renamed by the mapping, then by the preset (`auto`: detected once, from the
    first row's columns; none detected: the rows are taken as our formats)."""
    _, apply_preset, detect_preset = _presets()
    for number, row in rows:
        if isinstance(row, LineError):
            yield number, row
            continue
        if not isinstance(row, dict):
            yield number, row  # validation says what it should be
            continue
        try:
            row = rename(row, fields, number)
            if preset == "auto":
                preset = detect_preset(set(row)) if detect_preset is not None else None
            if preset is not None:
                row = apply_preset(row, preset)
        except VRError as exc:
            yield number, LineError(number, exc.message)
            continue
        except (KeyError, TypeError, ValueError) as exc:  # a preset's column of the wrong shape
            yield number, LineError(number, f"{preset} preset: {type(exc).__name__}: {exc}")
            continue
        yield number, row


def rename(row: dict[str, Any], fields: dict[str, str], number: int) -> dict[str, Any]:
    """The row with each mapped column under our field's name (a dotted column reads a nested
    value: `extra.answer`). A missing column is an error naming the column (its caller names the
    row: the CLI's `FILE:N:`, the upload's `line`, the Python API's `trajectory N`)."""
    if not fields:
        return row
    out = dict(row)
    for field, column in fields.items():
        found, value = _lookup(row, column)
        if not found:
            columns = ", ".join(sorted(map(str, row))[:20])
            raise BadTrajectory(
                f"no column {column!r} (mapped to {field}); its columns: {columns}",
                field=field,
            )
        if column in out and column not in fields:
            del out[column]  # renamed, so not kept in meta as well
        out[field] = value
    return out


def _lookup(row: dict[str, Any], column: str) -> tuple[bool, Any]:
    if column in row:
        return True, row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value
