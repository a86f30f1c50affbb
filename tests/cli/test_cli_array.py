"""`vrollout analyze` and `vrollout pedagogical` on a JSON array file (read an item at a time,
core.array_stream): the same analyses, rollouts and line errors as the same trajectories written
as JSONL; invalid JSON part way stops the run with the upload's message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from support import tiny_settings
from vrollout.cli.commands import main
from vrollout.cli.pedagogical import pedagogical_file
from vrollout.pipeline.analyzer import Analyzer

LINES = [
    {"id": "a", "prompt": "What is 2+2?", "response": "It is 4 [sure]."},
    {"id": "b", "prompt": 'Say "hi"', "response": 'hi \\ "there"', "reference_answer": "hi"},
    7,  # not an object: that line's error, in both files
    {"id": "c", "messages": [{"role": "user", "content": "]}"}, {"role": "assistant", "content": "{["}]},
]


def analyze(model: Path, src: Path, out: Path) -> list[str]:
    return [
        "analyze",
        str(src),
        "--out",
        str(out),
        "--student",
        str(model),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--no-store",
    ]


def comparable(analysis: dict) -> dict:
    """An analysis less what differs from run to run (its own id, when it was made)."""
    return {k: v for k, v in analysis.items() if k not in ("id", "created_at")}


def test_an_array_gives_the_analyses_of_the_same_jsonl(tiny_folder, tmp_path, capsys):
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    array = tmp_path / "runs.json"
    array.write_text("[\n" + ",\r\n".join(json.dumps(line, indent=1) for line in LINES) + "\n]\n")
    results = {}
    for src in (jsonl, array):
        out = tmp_path / f"{src.suffix[1:]}-out.jsonl"
        assert main(analyze(tiny_folder, src, out)) == 1  # line 3 failed
        err = capsys.readouterr().err
        assert f"{src}:3: a trajectory must be a JSON object, got int" in err
        results[src.suffix] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["job"]["line"] for a in results[".json"]] == [1, 2, 4]
    assert [comparable(a) for a in results[".json"]] == [comparable(a) for a in results[".jsonl"]]


def test_an_array_that_goes_wrong_part_way(tiny_folder, tmp_path, capsys):
    """Invalid JSON after 70 good items: the command stops with the upload's message and the
    file's line (exit 2, as for a Parquet file damaged part way); every item read before it is
    analysed and written, so `--resume` goes on from there once the file is mended."""
    array = tmp_path / "runs.json"
    items = [json.dumps({"id": f"t{i}", "prompt": f"{i}+{i}?", "response": str(2 * i)}) for i in range(70)]
    array.write_text("[\n" + ",\n".join([*items, '{"prompt" "x"}']) + "\n]\n")
    out = tmp_path / "out.jsonl"
    assert main(analyze(tiny_folder, array, out)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: {array}: invalid JSON array: Expecting ':' delimiter (line 72); the lines before it "
        "were analysed (mend the file and run again with --resume to go on)"
    )
    done = [json.loads(line)["job"]["line"] for line in out.read_text().splitlines()]
    assert done == list(range(1, 71))  # every item read before the error
    array.write_text("[\n" + ",\n".join(items) + "\n]\n")
    assert main([*analyze(tiny_folder, array, out), "--resume"]) == 0
    capsys.readouterr()
    assert [json.loads(line)["job"]["line"] for line in out.read_text().splitlines()] == list(range(1, 71))


def test_pedagogical_reads_an_array_as_the_same_jsonl(tiny, tmp_path, capsys):
    lines = [
        {"id": "a", "prompt": "What is 2+2?", "privileged": "2+2 = 4 [ok]", "reference_answer": "4"},
        "not an object",
        {"id": "b", "prompt": 'Say "hello"', "privileged": "hello \\ world", "reference_answer": "hello"},
    ]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    array = tmp_path / "prompts.json"
    array.write_text(json.dumps(lines, indent=2))
    settings = tiny_settings(tmp_path)
    analyzer = Analyzer(tiny, settings)
    exported = {}
    for src in (jsonl, array):
        out = tmp_path / src.suffix[1:]
        args = dict(file=str(src), out=str(out), split=None, map=None, preset=None, privileged=None)
        args |= dict(threshold=0.2, max_rank=None, temperature=None, top_p=None, seed=0)
        args |= dict(max_new_tokens=5, sweep=None, top_k=None, include="all", no_store=True)
        assert pedagogical_file(argparse.Namespace(**args), settings, analyzer) == 1
        assert f"{src}:2: a trajectory must be a JSON object, got str" in capsys.readouterr().err
        records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
        exported[src.suffix] = [(r["id"], r["completion_ids"]) for r in records]
    assert [i for i, _ in exported[".json"]] == ["a", "b"]
    assert exported[".json"] == exported[".jsonl"]


def test_pedagogical_on_an_array_that_goes_wrong_part_way(tiny, tmp_path, capsys):
    """The lines read before the broken item run and are written with the comparison; exit 2."""
    good = [{"id": f"p{i}", "prompt": f"What is {i}+{i}?", "reference_answer": str(2 * i)} for i in range(3)]
    array = tmp_path / "prompts.json"
    array.write_text("[\n" + ",\n".join([*map(json.dumps, good), '{"prompt" "x"}']) + "\n]\n")
    settings = tiny_settings(tmp_path)
    out = tmp_path / "out"
    args = dict(file=str(array), out=str(out), split=None, map=None, preset=None, privileged=None)
    args |= dict(threshold=0.2, max_rank=None, temperature=None, top_p=None, seed=0)
    args |= dict(max_new_tokens=4, sweep=None, top_k=None, include="all", no_store=True)
    assert pedagogical_file(argparse.Namespace(**args), settings, Analyzer(tiny, settings)) == 2
    err = capsys.readouterr().err
    assert f"error: {array}: invalid JSON array: Expecting ':' delimiter (line 5)" in err, err
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["p0", "p1", "p2"]
    assert (out / "comparison.csv").read_text().count("\n") == 4  # a header and the three lines
