"""core.array_stream: a JSON array file read a piece at a time gives what `parse_file` gives for
the same bytes (numbers, objects, error texts), whatever the piece size; an item over the line
limit is skipped without being held; a large array is read in bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from vrollout.config import Settings
from vrollout.errors import BadTrajectory
from vrollout.inputs.array_stream import iter_array
from vrollout.inputs.sources import iter_rows
from vrollout.inputs.trajectories import LineError, parse_file

BIG = b'{"prompt": "' + b"x" * 300 + b'", "response": "y"}'
CASES = {
    "normal": b'[{"prompt": "a", "response": "b"}, {"prompt": "c"}]',
    "nested": b'[{"messages": [{"role": "user", "content": "hi"}], "meta": {"a": [1, [2, {"b": {}}]]}}]',
    "brackets, quotes": b'[{"prompt": "]}[{,", "response": "say \\"]\\" \\\\"}, {"x": "\\\\\\""}]',
    "empty": b"[]",
    "empty with space": b" \n[ \r\n ] \n",
    "BOM": b'\xef\xbb\xbf[{"prompt": "a"}]',
    "over the limit": b'[{"prompt": "a"}, ' + BIG + b', {"prompt": "b"}, "' + b"s" * 300 + b'", 7]',
    "invalid in the middle": b'[{"prompt": "a"},\n{"prompt": "b"},\n{"prompt" "c"},\n{"prompt": "d"}]',
    "missing comma": b'[{"prompt": "a"}\n{"prompt": "b"}]',
    "trailing comma": b'[{"prompt": "a"},\n]',
    "trailing garbage": b'[{"prompt": "a"}]\n  x',
    "trailing whitespace": b'[{"prompt": "a"}]\n \t\r\n',
    "non-object items": b'[1, "two", null, true, -2.5e3, [3], {"prompt": "a"}]',
    "CRLF": b'[\r\n  {"prompt": "a",\r\n   "response": "b\\r\\n"},\r\n  {"prompt": "c"}\r\n]\r\n',
    "not UTF-8": b'[{"prompt": "a"},\n{"prompt": "\xff"}]',
    "UTF-8 text": '[{"prompt": "é€😀", "response": "\\u00e9"}]'.encode(),
    "unclosed": b'[{"prompt": "a"}, {"prompt": "b"',
    "unclosed string": b'[{"prompt": "a"}, {"prompt": "b',
    "only the bracket": b"[",
    "mismatched brackets": b'[{"a": [1}]',
    "number then letters": b"[1x]",
}


def parsed(data: bytes, limit: int) -> tuple[list, str | None]:
    """What an upload of `data` gives: its rows in order, or the file's error."""
    try:
        good, bad = parse_file(data, 10**9, limit)
    except BadTrajectory as exc:
        return [], exc.message
    return sorted([*good, *((e.line, e) for e in bad)], key=lambda r: r[0]), None


def streamed(rows) -> tuple[list, str | None]:
    got = []
    try:
        for row in rows:
            got.append(row)
    except BadTrajectory as exc:
        return got, exc.message
    return got, None


@pytest.mark.parametrize("name", CASES)
def test_streamed_rows_equal_parse_files(name, tmp_path):
    data = CASES[name]
    path = tmp_path / "runs.json"
    path.write_bytes(data)
    want, error = parsed(data, 200)
    through_sources = streamed(iter_rows(path, name=path.name, settings=Settings(max_line_bytes=200)))
    for chunk in (1, 2, 7, 64, 1 << 20):  # every cut: inside strings, escapes, characters, numbers
        got, got_error = streamed(iter_array(path, 200, chunk))
        assert got_error == error == through_sources[1], chunk
        if error is None:
            assert got == want == through_sources[0], chunk
    if error is None:
        assert want or name.startswith("empty")
    else:  # a problem of the whole file: the items before it came first, then the same error
        assert all(n < 3 for n, _ in got)


def test_the_messages_are_the_uploads(tmp_path):
    """A few of the texts, spelled out: the same as the upload path says them."""
    path = tmp_path / "runs.json"
    expected = {
        "over the limit": [
            (
                2,
                LineError(
                    2, f"the trajectory is {len(BIG)} bytes, over the limit of 200 (VROLLOUT_MAX_LINE_BYTES)"
                ),
            ),
            (4, LineError(4, "the trajectory is 302 bytes, over the limit of 200 (VROLLOUT_MAX_LINE_BYTES)")),
        ],
        "invalid in the middle": "invalid JSON array: Expecting ':' delimiter (line 3)",
        "missing comma": "invalid JSON array: expected ',' or ']' (line 2)",
        "trailing garbage": "invalid JSON array: extra data after the closing ']'",
        "not UTF-8": "the file is not UTF-8 text (byte 30, line 2)",
    }
    for name, want in expected.items():
        path.write_bytes(CASES[name])
        got, error = streamed(iter_array(path, 200, 5))
        if isinstance(want, str):
            assert error == want
        else:
            assert [row for row in got if isinstance(row[1], LineError)] == want
    path.write_bytes(CASES["invalid in the middle"])
    assert streamed(iter_array(path, 200, 5))[0] == [(1, {"prompt": "a"}), (2, {"prompt": "b"})]


def test_an_item_over_the_limit_is_skipped_without_being_held(tmp_path):
    """A 40 MB item between small ones: its LineError with its exact size, the items around it
    as they are, and never more than the limit and a few pieces in memory."""
    path = tmp_path / "runs.json"
    piece = 'text \\"]}[{ with an escape, ' * 4000  # quotes, brackets and backslashes in a string
    with path.open("w") as f:
        f.write('[{"prompt": "a"},\n{"prompt": "')
        for _ in range(40_000_000 // len(piece)):
            f.write(piece)
        f.write('", "n": [[1], {"k": "]"}]},\n{"prompt": "b"}]')
    size = path.stat().st_size - len('[{"prompt": "a"},\n') - len(',\n{"prompt": "b"}]')
    tracemalloc.start()
    try:
        got = list(iter_array(path, 1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    error = f"the trajectory is {size} bytes, over the limit of 1048576 (VROLLOUT_MAX_LINE_BYTES)"
    assert got == [(1, {"prompt": "a"}), (2, LineError(2, error)), (3, {"prompt": "b"})]
    assert peak < 8 << 20  # the limit (1 MiB) held before it is passed, and a few 1 MiB pieces


def test_a_large_array_is_read_in_bounded_memory(tmp_path):
    """~55 MB of trajectories through `iter_rows` (what `vrollout analyze` reads): the peak of
    Python's allocations stays under a tenth of the file's size."""
    path = tmp_path / "large.json"
    item = json.dumps({"prompt": "What is 2+2? " * 80, "response": 'It is "4". [done] ' * 60, "id": "{}"})
    head, tail = item.rsplit('"{}"', 1)
    count = 0
    with path.open("w") as f:
        f.write("[\n")
        for block in range(25):
            f.write(",\n".join(f'{head}"t{block}-{i}"{tail}' for i in range(1000)))
            f.write(",\n" if block < 24 else "\n]\n")
            count += 1000
    size = path.stat().st_size
    assert size > 50_000_000
    warm = tmp_path / "small.json"  # what the first read imports is not the reader's memory
    warm.write_text(json.dumps([{"prompt": "a"}]))
    list(iter_rows(warm, name=warm.name, settings=Settings()))
    tracemalloc.start()
    try:
        rows = iter_rows(path, name=path.name, settings=Settings())
        last = max(rows, key=lambda row: row[0])  # one row at a time, only the greatest kept
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last[0] == count and last[1]["id"] == "t24-999"
    assert peak < size / 10
