"""`vrollout pedagogical FILE --out DIR` on the tiny model: the three files, read back and
checked against the records a pedagogical job stores for the same lines; --map; bad lines and
bad options named."""

from __future__ import annotations

import argparse
import csv
import json

from support import GOOD, tiny_settings
from vrollout.cli.commands import main
from vrollout.cli.pedagogical import pedagogical_file
from vrollout.jobs.pedagogical import pedagogical_options, prepare_line
from vrollout.jobs.pedagogical import run_line as run_one_line
from vrollout.pipeline.analyzer import Analyzer
from vrollout.storage.store import Store

LINES = [
    {"id": "a", "question": "What is 2+2?", "solution": "2+2 = 4", "answer": "4"},
    {"id": "b", "question": "hi", "solution": "say hello", "answer": "hello"},
]


def args_for(src, out, **over) -> argparse.Namespace:
    values = dict(file=str(src), out=str(out), split=None, map=None, preset=None, privileged=None)
    values |= dict(threshold=0.2, max_rank=None, temperature=None, top_p=None, seed=None)
    values |= dict(max_new_tokens=5, sweep="0.01,0.5", top_k=None, include="all", no_store=False)
    return argparse.Namespace(**(values | over))


def test_writes_rollouts_comparison_and_report(tiny, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join([json.dumps(LINES[0]), "{nope", json.dumps(LINES[1])]) + "\n")
    settings = tiny_settings(tmp_path)
    analyzer = Analyzer(tiny, settings, Store(settings.database))
    out = tmp_path / "out"
    mapping = "prompt=question,privileged=solution,reference_answer=answer"
    code = pedagogical_file(args_for(src, out, map=mapping), settings, analyzer)
    err = capsys.readouterr().err
    assert code == 1 and f"{src}:2: invalid JSON" in err
    assert {p.name for p in out.iterdir()} >= {"rollouts.jsonl", "comparison.csv", "report.html"}
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["id"] for r in rows] == ["a", "b"]
    exported = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [e["id"] for e in exported] == ["a", "b"]  # --include all
    assert "<html" in (out / "report.html").read_text().lower()
    # The same lines as a pedagogical job runs them: the same rollouts, and each analysis stored.
    options = pedagogical_options(analyzer, threshold=0.2, sweep=[0.01, 0.5], max_new_tokens=5)
    for number, line, row, row_out in zip((1, 3), LINES, rows, exported, strict=True):
        payload = {"id": line["id"], "prompt": line["question"], "privileged": line["solution"]}
        payload |= {"reference_answer": line["answer"], "generation": options["generation"]}
        _, record = run_one_line(analyzer, number, prepare_line(analyzer, payload, options))
        assert row_out["completion_ids"] == record["pedagogical"]["response_ids"]
        assert int(row["opd_divergences"]) == record["opd"]["divergences"]
        assert int(row["interventions"]) == record["pedagogical"]["num_interventions"]
    with analyzer.store.connect() as db:  # the CLI's two analyses (run_line stores nothing)
        assert db.execute("SELECT COUNT(*) FROM analyses").fetchone()[0] == 2


def test_bad_options_and_unreadable_files_are_named(tiny, tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    settings = tiny_settings(tmp_path)
    analyzer = Analyzer(tiny, settings)
    assert pedagogical_file(args_for(src, tmp_path / "o", threshold=2.0), settings, analyzer) == 2
    assert "threshold" in capsys.readouterr().err
    assert pedagogical_file(args_for(src, tmp_path / "o", sweep="a,b"), settings, analyzer) == 2
    assert "sweep" in capsys.readouterr().err
    assert pedagogical_file(args_for(tmp_path / "missing.jsonl", tmp_path / "o"), settings, analyzer) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_teacher_context_flags_reach_every_line(tiny_folder, tmp_path, capsys):
    """`--teacher-context sibling` and `--teacher-template` as `vrollout analyze` takes them: the
    file is indexed for siblings, and each line's analysis and rollout get the same context."""
    src, out, db = tmp_path / "p.jsonl", tmp_path / "out", tmp_path / "db.sqlite3"
    lines = [
        {"id": "a", "prompt": "What is 2+2?", "response": "4", "reference_answer": "4"},
        {"id": "b", "prompt": "What is 2+2?", "response": "5", "reference_answer": "4"},
        {"id": "c", "prompt": "hi", "response": "yo", "teacher_context": "feedback", "feedback": "Greet."},
    ]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    template = "Another answer: {privileged}\n{prompt}"
    flags = ["--teacher-context", "sibling", "--teacher-template", template, "--include", "all"]
    argv = ["pedagogical", str(src), "--out", str(out), "--student", str(tiny_folder), "--database", str(db)]
    code = main([*argv, *flags, "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32"])
    err = capsys.readouterr().err
    assert code == 1 and f"{src}:1: teacher_context sibling: no successful sibling" in err, err
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["b", "c"]
    stored = [Store(db).get(item["id"]) for item in Store(db).list()[0]]
    analyses = {a["trajectory"]["id"]: a for a in stored}
    assert sorted(analyses) == ["b", "c"]
    assert analyses["b"]["teacher"]["sibling"] == {"line": 1, "id": "a"}
    assert "Another answer: 4\n" in analyses["b"]["teacher"]["context_text"]  # the file's template
    assert analyses["c"]["teacher"]["context_kind"] == "feedback"  # the line's own choice wins
    assert "Greet." in analyses["c"]["teacher"]["context_text"]
