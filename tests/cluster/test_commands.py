"""`vrollout localize` and `vrollout pedagogical` with --ray on a local Ray (the slow tier): the
folder each writes equals the plain run's (numbers within 1e-5, ids aside); pedagogical --ray
--resume after a run killed part way (its records.jsonl cut mid-line) writes what a whole run
writes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from support import REPO
from support.ray_runs import FLAGS, same

pytest.importorskip("ray")

from vrollout.cli.commands import main  # noqa: E402
from vrollout.cli.journal import RECORDS  # noqa: E402

pytestmark = pytest.mark.slow
RAY = ("--ray", "auto", "--workers", "2", "--batch-size", "3")


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def rows(path):
    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(path.open())]


def test_localize_on_ray_writes_the_plain_folder(local_ray, tiny_folder, tmp_path, capsys):
    script = REPO / "examples" / "make_localization_data.py"
    made = [sys.executable, str(script), "--problems", "5", "--per-problem", "2", "--seed", "1"]
    source = tmp_path / "steps.jsonl"
    source.write_text(subprocess.run(made, check=True, capture_output=True, text=True).stdout + "{nope\n")
    base = ["localize", str(source), "--student", str(tiny_folder), *FLAGS, "--bootstrap", "20"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 1
    plain_err = capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "ray"), *RAY]) == 1
    ray_err = capsys.readouterr().err
    assert f"{source}:11: invalid JSON" in plain_err and f"{source}:11: invalid JSON" in ray_err
    for name in ("analyses.jsonl", "predictions.jsonl"):
        got, want = jsonl(tmp_path / "ray" / name), jsonl(tmp_path / "plain" / name)
        assert len(got) == len(want) == 10
        same(got, want, name)
    same(*(json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ray", "plain")), "metrics")


def test_pedagogical_on_ray_writes_the_plain_folder_and_resumes(local_ray, tiny_folder, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"What is {i}+{i}?", "privileged": f"{i}+{i} = {2 * i}",
              "reference_answer": str(2 * i)} for i in range(7)]  # fmt: skip
    texts = [json.dumps(line) for line in lines]
    texts.insert(3, '{"prompt": 3}')  # line 4: bad
    source.write_text("\n".join(texts) + "\n")
    base = ["pedagogical", str(source), "--student", str(tiny_folder), *FLAGS, "--max-new-tokens", "4",
            "--include", "all", "--sweep", "0.05,0.5"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain")]) == 1
    assert main([*base, "--out", str(tmp_path / "ray"), *RAY]) == 1
    err = capsys.readouterr().err
    assert err.count(f"{source}:4: ") == 2

    def compare(folder: str) -> None:
        for name in (RECORDS, "rollouts.jsonl"):
            got, want = jsonl(tmp_path / folder / name), jsonl(tmp_path / "plain" / name)
            assert [r.get("line", r.get("id")) for r in got] == [r.get("line", r.get("id")) for r in want]
            same(got, want, f"{folder}/{name}")
        same(rows(tmp_path / folder / "comparison.csv"), rows(tmp_path / "plain" / "comparison.csv"), folder)

    compare("ray")
    # What a driver killed while writing line 6 leaves (records are flushed one by one).
    records = (tmp_path / "ray" / RECORDS).read_bytes().splitlines(keepends=True)
    (tmp_path / "ray" / RECORDS).write_bytes(b"".join(records[:4]) + records[4][:25])
    assert main([*base, "--out", str(tmp_path / "ray"), *RAY, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "resuming: 4 lines already in" in err and "7 lines" not in err
    compare("ray")
