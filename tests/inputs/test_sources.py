"""core.sources: the same trajectories as JSONL, a JSON array, Parquet (pyarrow and pandas), a
`datasets` save_to_disk folder and mapped columns read as the same rows and give the same analyses;
bad mappings, missing columns, unreadable Parquet and an unreachable Hub get clear errors."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import vrollout
from support import tiny_settings
from vrollout.config import Settings
from vrollout.errors import BadTrajectory
from vrollout.inputs.sources import iter_rows, parse_mapping
from vrollout.inputs.trajectories import LineError
from vrollout.pipeline.analyzer import Analyzer

ROWS = [
    {"id": "a", "prompt": "What is 2+2?", "response": "2+2 = 5", "privileged": "4", "reference_answer": "4"},
    {
        "id": "b",
        "prompt": "Name a colour.",
        "response": "Blue.",
        "privileged": "red",
        "reference_answer": "red",
    },
    {
        "id": "c",
        "prompt": "hi",
        "response": "hello the world",
        "privileged": "be brief",
        "reference_answer": "x",
    },
]
# The same trajectories as a dataset would hold them: other column names, one of them nested
THEIRS = [
    {"uid": r["id"], "question": r["prompt"], "answer": r["response"], "extra": {"solution": r["privileged"]}}
    | {"gt": r["reference_answer"]}
    for r in ROWS
]
MAP = "id=uid,prompt=question,response=answer,privileged=extra.solution,reference_answer=gt"


def rows(source, **kw):
    return list(iter_rows(source, name="test", settings=Settings(), **kw))


def write_sources(tmp_path):
    """Every kind of source holding ROWS, by its writer's own code."""
    import datasets

    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    array = tmp_path / "runs.json"
    array.write_text(json.dumps(ROWS, indent=1))
    arrow = tmp_path / "arrow.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), arrow, row_group_size=2)  # two row groups
    pandas = tmp_path / "pandas.parquet"
    pd.DataFrame(ROWS).to_parquet(pandas)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    splits = tmp_path / "splits"
    datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS)).save_to_disk(str(splits))
    return {"jsonl": jsonl, "json": array, "arrow": arrow, "pandas": pandas, "saved": saved, "splits": splits}


def test_every_source_reads_the_same_rows(tmp_path):
    sources = write_sources(tmp_path)
    expected = list(enumerate(ROWS, start=1))
    for kind, path in sources.items():
        assert rows(path) == expected, kind
        assert rows(str(path)) == expected, kind
    assert rows(sources["splits"], split="train") == expected
    assert rows(sources["arrow"].read_bytes()) == expected  # an upload: Parquet by its magic bytes
    assert rows(sources["jsonl"].read_bytes()) == expected


def test_mapped_columns_give_our_fields(tmp_path):
    import datasets

    pq.write_table(pa.Table.from_pylist(THEIRS), tmp_path / "theirs.parquet")
    datasets.Dataset.from_list(THEIRS).save_to_disk(str(tmp_path / "theirs"))
    for source in (tmp_path / "theirs.parquet", tmp_path / "theirs"):
        got = rows(source, mapping=MAP)
        assert [{k: v for k, v in r.items() if k in ROWS[0]} for _, r in got] == ROWS
        assert all(set(r) == set(ROWS[0]) | {"extra"} for _, r in got)  # renamed, not copied
    as_dict = dict(pair.split("=") for pair in MAP.split(","))
    assert rows(tmp_path / "theirs.parquet", mapping=as_dict) == rows(
        tmp_path / "theirs.parquet", mapping=MAP
    )


def test_values_from_numpy_and_arrow_become_json_values(tmp_path):
    frame = pd.DataFrame(
        {
            "prompt_ids": [np.array([1, 2, 3]), np.array([4, 5])],
            "response_ids": [np.array([6]), np.array([7, 8])],
            "score": np.array([0.5, 1.0], dtype=np.float32),
            "step": np.array([3, 4], dtype=np.int64),
            "correct": [True, False],
            "meta": [{"k": np.int32(1)}, {"k": np.int32(2)}],
        }
    )
    frame.to_parquet(tmp_path / "ids.parquet")
    got = rows(tmp_path / "ids.parquet")
    assert got[0] == (
        1,
        {
            "prompt_ids": [1, 2, 3],
            "response_ids": [6],
            "score": 0.5,
            "step": 3,
            "correct": True,
            "meta": {"k": 1},
        },
    )
    json.dumps([r for _, r in got])  # plain JSON all the way down
    assert type(got[1][1]["step"]) is int and type(got[1][1]["prompt_ids"][0]) is int


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ("prompt", ["'prompt' is not field=column"]),
        ("prompt=", ["is not field=column"]),
        ("promt=question", ["'promt' is not a line field", "did you mean 'prompt'"]),
        ("answer=gt", ["'answer' is not a line field", "reference_answer"]),
        ("prompt=question,prompt=q2", ["'prompt' is given twice"]),
    ],
)
def test_bad_mappings_are_refused_before_reading(tmp_path, mapping, words):
    with pytest.raises(BadTrajectory) as info:
        iter_rows(tmp_path / "not-read-yet.jsonl", name="x", settings=Settings(), mapping=mapping)
    assert info.value.details["field"] == "map"
    for word in words:
        assert word in info.value.message


def test_a_missing_column_is_that_rows_error(tmp_path):
    theirs = [dict(THEIRS[0]), {k: v for k, v in THEIRS[1].items() if k != "gt"}, {**THEIRS[2], "extra": {}}]
    pq.write_table(pa.Table.from_pylist(theirs), tmp_path / "theirs.parquet")
    got = rows(tmp_path / "theirs.parquet", mapping=MAP)
    assert isinstance(got[0][1], dict)
    # Arrow fills a column a row lacks with null; JSONL rows really lack it
    (tmp_path / "theirs.jsonl").write_text("\n".join(json.dumps(r) for r in theirs))
    got = rows(tmp_path / "theirs.jsonl", mapping=MAP)
    assert got[1] == (2, LineError(2, got[1][1].error))
    assert "no column 'gt' (mapped to reference_answer)" in got[1][1].error
    assert "its columns: answer, extra, question, uid" in got[1][1].error
    assert got[2][0] == 3 and "no column 'extra.solution' (mapped to privileged)" in got[2][1].error


def test_unreadable_parquet_is_a_clear_error(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS * 100), good, row_group_size=50)
    data = good.read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 100)
    with pytest.raises(BadTrajectory, match="test: not a readable Parquet file"):
        rows(bad)
    with pytest.raises(BadTrajectory, match="test: not a readable Parquet file"):
        rows(data[: len(data) // 2])  # a truncated upload
    group = pq.ParquetFile(good).metadata.row_group(1)  # the second of six row groups of 50 rows
    start = min(group.column(i).data_page_offset for i in range(group.num_columns))
    damaged = bytearray(data)
    damaged[start : start + group.total_byte_size] = b"\xff" * group.total_byte_size  # footer intact
    (tmp_path / "damaged.parquet").write_bytes(bytes(damaged))
    got = []
    with pytest.raises(BadTrajectory, match=r"test: Parquet: cannot read the rows from row 51 on"):
        got.extend(iter_rows(tmp_path / "damaged.parquet", name="test", settings=Settings()))
    assert [n for n, _ in got] == list(range(1, 51))  # the rows before it were read


def test_folders_and_splits(tmp_path):
    sources = write_sources(tmp_path)
    with pytest.raises(BadTrajectory, match="no split 'test'; its splits: train"):
        rows(sources["splits"], split="test")
    with pytest.raises(BadTrajectory, match="a single dataset, it has no splits"):
        rows(sources["saved"], split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadTrajectory, match="written by datasets' save_to_disk"):
        rows(tmp_path / "empty")
    with pytest.raises(BadTrajectory, match="split applies to a datasets folder"):
        rows(sources["jsonl"], split="train")


def test_the_hub_unreachable_is_a_clear_error_in_bounded_time(monkeypatch):
    # iter_rows sets huggingface_hub's timeouts in the environment (whole seconds, as it reads
    # them) unless given: give them here, so that they are put back for the tests after this one.
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "3")
    settings = Settings(hub_timeout_s=3)
    start = time.monotonic()
    with pytest.raises(
        BadTrajectory, match="cannot read the dataset 'someone/gsm8k' \\(split 'train'\\) from the Hub"
    ):
        list(iter_rows("hf://datasets/someone/gsm8k", name="x", settings=settings, split="train"))
    assert time.monotonic() - start < 10
    with pytest.raises(BadTrajectory, match="give --split"):
        list(iter_rows("hf://datasets/someone/gsm8k", name="x", settings=settings))
    with pytest.raises(BadTrajectory, match="hf://datasets/ORG/NAME"):
        list(iter_rows("hf://datasets/gsm8k", name="x", settings=settings, split="train"))


def test_presets_are_named_and_checked(tmp_path):
    with pytest.raises(BadTrajectory, match="unknown preset 'verll'; the presets: verl, trl, tinker, auto"):
        iter_rows(tmp_path / "x.jsonl", name="x", settings=Settings(), preset="verll")
    assert parse_mapping(None) == {} and parse_mapping(" prompt = q , ") == {"prompt": "q"}


def test_jsonl_keeps_parse_files_messages_and_limits(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n{"x": "' + b"y" * 100 + b'"}\n{bad\n\xff\n{"prompt": "b"}')
    got = list(iter_rows(path, name="x", settings=Settings(max_line_bytes=50)))
    assert [n for n, _ in got] == [1, 3, 4, 5, 6]
    assert got[1][1].error == "the line is 109 bytes, over the limit of 50 (VROLLOUT_MAX_LINE_BYTES)"
    assert got[2][1].error.startswith("invalid JSON") and got[3][1].error.startswith("not UTF-8 text")
    path.write_bytes("\ufeff".encode("utf-16"))
    with pytest.raises(BadTrajectory, match="UTF-16"):
        rows(path)


def test_every_source_gives_the_same_analyses(tiny, tmp_path):
    """The Python API on each source, and on mapped columns: identical ids and numbers."""
    import datasets

    vr = vrollout.VirtualRollout(Analyzer(tiny, tiny_settings(tmp_path)))
    sources = write_sources(tmp_path)
    pq.write_table(pa.Table.from_pylist(THEIRS), tmp_path / "theirs.parquet")
    datasets.Dataset.from_list(THEIRS).save_to_disk(str(tmp_path / "theirs"))

    def numbers(analyses):
        return [
            (a.id and a["trajectory"]["id"], a["teacher"]["privileged"], [s["reverse_kl"] for s in a.steps])
            for a in analyses
        ]

    expected = numbers(vr.analyze_many(ROWS, progress=False))
    assert [e[0] for e in expected] == ["a", "b", "c"]
    for kind, path in sources.items():
        got = numbers(vr.analyze_many(path, progress=False, split="train" if kind == "splits" else None))
        assert got == expected, kind
    for source in (str(tmp_path / "theirs.parquet"), tmp_path / "theirs", THEIRS):
        assert numbers(vr.analyze_many(source, mapping=MAP, progress=False)) == expected
    with pytest.raises(BadTrajectory, match="trajectory 1: no column 'gt'"):
        lacking = {k: v for k, v in THEIRS[1].items() if k != "gt"}
        list(vr.analyze_many([THEIRS[0], lacking], mapping=MAP, progress=False))


def test_the_hub_timeout_goes_to_huggingface_hub_in_whole_seconds(monkeypatch):
    """huggingface_hub parses HF_HUB_ETAG_TIMEOUT as an int when imported: "2.5" would break every
    later import of transformers in this process and its children."""
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT", raising=False)
    with pytest.raises(BadTrajectory):
        list(
            iter_rows(
                "hf://datasets/someone/gsm8k", name="x", settings=Settings(hub_timeout_s=1.5), split="t"
            )
        )
    assert os.environ["HF_HUB_ETAG_TIMEOUT"] == os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] == "2"
