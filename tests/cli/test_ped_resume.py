"""`vrollout pedagogical --resume` on the tiny model: records.jsonl keeps every line's record as it
comes; a run killed part way (its records.jsonl cut after some lines, the last one half written)
continues with --resume and writes the files a whole run writes, each line once, in line order."""

from __future__ import annotations

import argparse
import csv
import json

from support import tiny_settings
from support.ray_runs import same
from vrollout.cli.journal import RECORDS
from vrollout.cli.pedagogical import pedagogical_file
from vrollout.pipeline.analyzer import Analyzer

LINES = [
    {
        "id": f"q{i}",
        "prompt": f"What is {i}+{i}?",
        "privileged": f"{i}+{i} = {2 * i}",
        "reference_answer": str(2 * i),
    }
    for i in range(6)
]


def args_for(src, out, **over) -> argparse.Namespace:
    values = dict(file=str(src), out=str(out), split=None, map=None, preset=None, privileged=None)
    values |= dict(threshold=0.2, max_rank=None, temperature=None, top_p=None, seed=None)
    values |= dict(max_new_tokens=4, sweep=None, top_k=None, include="all", no_store=True, resume=False)
    return argparse.Namespace(**(values | over))


def test_a_killed_run_resumes_and_writes_what_a_whole_run_writes(tiny, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    rows = [json.dumps(line) for line in LINES]
    rows.insert(2, '{"prompt": 3}')  # line 3: bad, reported by both runs
    src.write_text("\n".join(rows) + "\n")
    settings = tiny_settings(tmp_path)
    analyzer = Analyzer(tiny, settings)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert pedagogical_file(args_for(src, whole), settings, analyzer) == 1
    assert pedagogical_file(args_for(src, cut), settings, analyzer) == 1
    capsys.readouterr()
    records = (whole / RECORDS).read_bytes().splitlines(keepends=True)
    assert [json.loads(r)["line"] for r in records] == [1, 2, 4, 5, 6, 7]
    (cut / RECORDS).write_bytes(b"".join(records[:3]) + records[3][:40])  # killed while writing line 5
    for name in ("rollouts.jsonl", "comparison.csv", "report.html"):
        (cut / name).unlink()

    assert pedagogical_file(args_for(src, cut, resume=True), settings, analyzer) == 1
    err = capsys.readouterr().err
    assert f"resuming: 3 lines already in {cut / RECORDS}" in err
    assert f"{src}:3: " in err and "3 lines (3 from the earlier run)" in err
    for name in (RECORDS, "rollouts.jsonl"):  # the same lines and numbers (batched apart: within 1e-5)
        same(read_jsonl(cut / name), read_jsonl(whole / name), name)
    same(read_csv(cut / "comparison.csv"), read_csv(whole / "comparison.csv"), "comparison.csv")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path):
    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(path.open())]
