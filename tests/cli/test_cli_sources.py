"""`vrollout analyze` on Parquet, a `datasets` save_to_disk folder and mapped columns (`--map`,
`--from`, `--split`): the same analyses as the JSONL file, on a tiny model saved to a folder; bad
options and unreadable files are said before any model loads."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vrollout.cli.commands import main

ROWS = [
    {"id": "a", "prompt": "What is 2+2?", "response": "2+2 = 5", "privileged": "4"},
    {"id": "b", "prompt": "hi", "response": "hello the world", "privileged": "be brief"},
]
THEIRS = [
    {"uid": r["id"], "q": r["prompt"], "a": r["response"], "hint": {"text": r["privileged"]}} for r in ROWS
]
MAP = "id=uid,prompt=q,response=a,privileged=hint.text"


@pytest.fixture(scope="module")
def student(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny.student.model.save_pretrained(folder)
    tiny.student.tokenizer.save_pretrained(folder)
    return folder


def run(student, tmp_path, source, *flags) -> list[tuple]:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.jsonl"
    argv = ["analyze", str(source), "--out", str(out), "--no-store", "--student", str(student)]
    assert main([*argv, "--device", "cpu", "--dtype", "float32", *flags]) == 0
    found = [json.loads(line) for line in out.read_text().splitlines()]
    return [
        (
            a["job"]["line"],
            a["trajectory"]["id"],
            a["teacher"]["privileged"],
            [s["reverse_kl"] for s in a["steps"]],
        )
        for a in found
    ]


def test_every_source_gives_the_same_analyses(student, tmp_path):
    import datasets

    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    expected = run(student, tmp_path, jsonl)
    assert [(e[0], e[1]) for e in expected] == [(1, "a"), (2, "b")]
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "runs.parquet")
    assert run(student, tmp_path, tmp_path / "runs.parquet") == expected
    datasets.DatasetDict(train=datasets.Dataset.from_list(THEIRS)).save_to_disk(str(tmp_path / "saved"))
    assert run(student, tmp_path, tmp_path / "saved", "--split", "train", "--map", MAP) == expected
    pq.write_table(pa.Table.from_pylist(THEIRS), tmp_path / "theirs.parquet")
    assert run(student, tmp_path, tmp_path / "theirs.parquet", "--map", MAP, "--from", "auto") == expected


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--map", "promt=q"], ["'promt' is not a line field (did you mean 'prompt'?)"]),
        (["--map", "prompt"], ["'prompt' is not field=column"]),
        (["--from", "verll"], ["unknown preset 'verll'"]),
        (["--split", "train"], ["split applies to a datasets folder"]),
    ],
)
def test_bad_options_are_said_before_the_models_load(tmp_path, capsys, flags, words):
    src = tmp_path / "runs.jsonl"
    src.write_text(json.dumps(ROWS[0]))
    # --student names no model: reaching the models would fail otherwise
    argv = ["analyze", str(src), "--out", str(tmp_path / "o.jsonl"), "--student", str(tmp_path / "none")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_unreadable_parquet_and_missing_columns(student, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 64)
    assert main(["analyze", str(bad), "--out", str(tmp_path / "o.jsonl"), "--student", "none"]) == 2
    assert "bad.parquet: not a readable Parquet file" in capsys.readouterr().err
    src = tmp_path / "theirs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in (THEIRS[0], {"uid": "b", "a": "x"})) + "\n")
    argv = ["analyze", str(src), "--out", str(tmp_path / "o.jsonl"), "--no-store", "--student", str(student)]
    assert main([*argv, "--device", "cpu", "--dtype", "float32", "--map", MAP]) == 1
    err = capsys.readouterr().err
    assert f"{src}:2: no column 'q' (mapped to prompt); its columns: a, uid" in err
    assert "1 analysed, 1 failed" in err


def test_a_hub_dataset_out_of_reach_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VROLLOUT_HUB_TIMEOUT_S", "2")  # the Hub is out of reach here: no hang
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")  # else set by the run and left for later tests
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    argv = ["analyze", "hf://datasets/someone/data", "--split", "train", "--out", str(tmp_path / "o.jsonl")]
    assert main([*argv, "--student", "none"]) == 2
    assert "cannot read the dataset 'someone/data' (split 'train') from the Hub" in capsys.readouterr().err
