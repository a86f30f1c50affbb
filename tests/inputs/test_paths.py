"""inputs.paths: a FILE argument that names a folder of step files (verl's rollout_data_dir), a
glob or several paths is read in a stable order (numbers as numbers), its lines numbered as one
file's and named back as FILE:LINE; a datasets save_to_disk folder is still one source."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vrollout.config import Settings
from vrollout.errors import BadTrajectory
from vrollout.inputs.paths import Sources, expand, natural_key
from vrollout.inputs.trajectories import LineError


def line(i: int) -> dict:
    return {"id": f"l{i}", "prompt": f"p{i}", "response": f"r{i}"}


def step_folder(tmp_path, steps=(1, 2, 10), per_step=2):
    """A run's folder as verl leaves it: one JSONL per step, named by the step."""
    folder = tmp_path / "rollout_data"
    folder.mkdir()
    for step in steps:
        rows = [line(step * 100 + k) for k in range(per_step)]
        (folder / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def read(given, **kw):
    sources = Sources(given, Settings(), **kw)
    return sources, list(sources.rows())


def test_a_folder_of_step_files_is_read_in_step_order_and_numbered_as_one_file(tmp_path):
    folder = step_folder(tmp_path)
    (folder / "notes.txt").write_text("not a data file")
    sources, rows = read(folder)
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["id"] for _, r in rows] == ["l100", "l101", "l200", "l201", "l1000", "l1001"]  # 2 before 10
    assert sources.where(3) == f"{folder / '2.jsonl'}:1"
    assert sources.where(6) == f"{folder / '10.jsonl'}:2"
    assert sources.name == "rollout_data (3 files)"
    assert sources.offsets() == [0, 2, 4]  # counted without decoding: what rows() numbered from


def test_globs_and_several_paths_keep_the_order_given(tmp_path):
    folder = step_folder(tmp_path)
    _, rows = read(str(folder / "*.jsonl"))
    assert [r["id"] for _, r in rows][::2] == ["l100", "l200", "l1000"]
    _, rows = read([str(folder / "10.jsonl"), str(folder / "1.jsonl")])  # as given, not re-sorted
    assert [r["id"] for _, r in rows] == ["l1000", "l1001", "l100", "l101"]
    with pytest.raises(BadTrajectory, match="no file matches"):
        Sources(str(folder / "*.parquet"), Settings())


def test_one_file_is_named_as_before(tmp_path):
    path = step_folder(tmp_path) / "2.jsonl"
    sources, rows = read(str(path))
    assert [n for n, _ in rows] == [1, 2] and not sources.several
    assert sources.where(2) == f"{path}:2" and sources.name == "2.jsonl"


def test_bad_lines_and_blank_lines_keep_their_own_file_numbers(tmp_path):
    folder = step_folder(tmp_path, steps=(1, 2))
    (folder / "1.jsonl").write_text(json.dumps(line(1)) + "\n\n{broken\n\n")  # lines 1 and 3 have text
    (folder / "3.jsonl").write_text("")  # an empty step file holds no lines
    sources, rows = read(folder)
    assert [n for n, _ in rows] == [1, 3, 4, 5]
    bad = rows[1][1]
    assert isinstance(bad, LineError) and bad.line == 3
    assert sources.where(4) == f"{folder / '2.jsonl'}:1"
    assert sources.offsets() == [0, 3, 5]


def test_mixed_formats_in_one_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([line(1), line(2)]), folder / "a1.parquet")
    (folder / "a2.json").write_text(json.dumps([line(3)]))
    (folder / "a3.jsonl").write_text(json.dumps(line(4)) + "\n")
    sources, rows = read(folder)
    assert [(n, r["id"]) for n, r in rows] == [(1, "l1"), (2, "l2"), (3, "l3"), (4, "l4")]
    assert sources.offsets() == [0, 2, 3]


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    folder = step_folder(tmp_path, steps=(1,))
    (folder / "2.parquet").write_bytes(b"PAR1 not really")
    sources = Sources(folder, Settings())
    with pytest.raises(BadTrajectory, match=r"2\.parquet: .*not a readable Parquet file"):
        list(sources.rows())


def test_a_datasets_folder_is_still_one_source_and_an_empty_folder_is_refused(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([line(1), line(2)]).save_to_disk(str(saved))
    assert expand(saved) == [str(saved)]
    sources, rows = read(saved)
    assert [r["id"] for _, r in rows] == ["l1", "l2"] and not sources.several
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadTrajectory, match="written by datasets' save_to_disk"):
        Sources(tmp_path / "empty", Settings())


def test_natural_order():
    names = ["10.jsonl", "2.jsonl", "1.jsonl", "step_2.jsonl", "step_10.jsonl"]
    assert sorted(names, key=natural_key) == [
        "1.jsonl",
        "2.jsonl",
        "10.jsonl",
        "step_2.jsonl",
        "step_10.jsonl",
    ]


def test_a_first_line_nested_too_deeply_is_counted_as_a_bad_line_not_a_crash(tmp_path):
    # Counting a file's lines looks at its first line to tell JSONL from one JSON document:
    # a line nested past what json.loads follows (a RecursionError) is a bad line of a JSONL file
    folder = step_folder(tmp_path, steps=(1, 2))
    (folder / "1.jsonl").write_text('{"a": ' + "[" * 5000 + "\n" + json.dumps(line(1)) + "\n")
    sources, rows = read(folder)
    assert [n for n, _ in rows] == [1, 2, 3, 4]
    assert isinstance(rows[0][1], LineError) and rows[0][1].line == 1
    assert sources.offsets() == [0, 2]
