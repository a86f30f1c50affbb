"""Parquet decompression bombs (issue #24, item 4): a file of a few hundred bytes whose rows all
point at one large dictionary value. Decoded bytes are capped per row and per upload before
rows become Python values, and memory stays bounded (Arrow's pool peak, measured in a fresh
process, never a timer)."""

from __future__ import annotations

import io
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vrollout.config import Settings
from vrollout.errors import TooLong
from vrollout.inputs.sources import iter_rows, row_sizes
from vrollout.inputs.trajectories import LineError

VALUE = 5_000_000  # bytes of the one dictionary value


def bomb(rows: int = 600, store_schema: bool = False, per_row: int = 1) -> bytes:
    """`rows` rows whose prompt (and `per_row` list items) all point at one VALUE-byte string."""
    dictionary = pa.array(["x" * VALUE])
    prompt = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), dictionary)
    items = pa.DictionaryArray.from_arrays(pa.array([0] * rows * per_row, pa.int32()), dictionary)
    steps = pa.ListArray.from_arrays(pa.array([i * per_row for i in range(rows + 1)], pa.int32()), items)
    table = pa.table({"prompt": prompt, "response": ["y"] * rows, "steps": steps})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", store_schema=store_schema)
    return buf.getvalue()


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


@pytest.mark.parametrize("store_schema", [False, True])
def test_a_bomb_is_refused_once_its_decoded_rows_pass_the_upload_limit(store_schema):
    data = bomb(store_schema=store_schema, per_row=0)  # 5 MB a row: under the line limit
    assert len(data) < 2000
    seen = 0
    with pytest.raises(TooLong, match="over the limit of 67108864 \\(VROLLOUT_MAX_UPLOAD_BYTES\\)"):
        for _ in iter_rows(data, name="bomb.parquet", settings=settings()):
            seen += 1
    assert seen < 15  # 5 MB decoded per row: refused after a dozen of 600


def test_a_row_over_the_line_limit_is_its_error_and_is_never_decoded():
    data = bomb(rows=50, per_row=3)  # 4 x 5 MB, "y" and a list (8)
    got = list(iter_rows(data, name="bomb.parquet", settings=settings(max_line_bytes=1_000_000)))
    assert [n for n, _ in got] == list(range(1, 51))
    assert all(isinstance(row, LineError) for _, row in got)
    assert "the row (decoded) is 20000009 bytes, over the limit of 1000000" in got[0][1].error


def test_the_metadata_size_is_checked_before_any_row_is_decoded():
    table = pa.table({"prompt": [f"question {i} " * 20 for i in range(200)], "response": ["y"] * 200})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with pytest.raises(TooLong, match="big.parquet: the Parquet file is over \\d+ bytes uncompressed"):
        iter_rows(buf.getvalue(), name="big.parquet", settings=settings(max_upload_bytes=10_000))


def test_row_sizes_count_what_decoding_would_make():
    dictionary = pa.array(["abc", "defgh"])
    column = pa.DictionaryArray.from_arrays(pa.array([1, 0, None, 1], pa.int32()), dictionary)
    assert list(row_sizes(column)) == [5, 3, 0, 5]
    lists = pa.array([["ab", "c"], [], None, ["defg"]])
    assert list(row_sizes(lists)) == [3 + 8, 8, 8, 4 + 8]
    structs = pa.array([{"role": "user", "content": "hello"}, {"role": "x", "content": None}])
    assert list(row_sizes(structs)) == [9, 1]
    assert list(row_sizes(pa.array([1, 2], pa.int64()))) == [8, 8]
    assert list(row_sizes(lists.slice(3, 1))) == [12]  # a slice counts its own rows only


MEASURE = """
import sys, pyarrow as pa
from vrollout.config import Settings
from vrollout.inputs.sources import iter_rows
data = open(sys.argv[1], 'rb').read()
try:
    for _ in iter_rows(data, name='bomb.parquet', settings=Settings(_env_file=None)):
        pass
    print('accepted')
except Exception as exc:
    print(type(exc).__name__)
print(pa.default_memory_pool().max_memory())
"""


@pytest.mark.parametrize(("per_row", "outcome"), [(0, "TooLong"), (2, "accepted")])
def test_reading_a_bomb_keeps_arrow_memory_bounded(tmp_path, per_row, outcome):
    """Before: 600 rows x 5 MB decoded at once (2.6 GiB); now a batch's dictionary and a few
    rows. With 15 MB rows every row is its line error (over VROLLOUT_MAX_LINE_BYTES), unread."""
    path = tmp_path / "bomb.parquet"
    path.write_bytes(bomb(per_row=per_row))
    run = [sys.executable, "-c", MEASURE, str(path)]
    got, peak = subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()
    assert got == outcome and int(peak) < 200 * 2**20, (got, peak)
