"""`vrollout analyze` on the real default model: good lines analysed, bad lines named by number."""

from __future__ import annotations

import json

import pytest
from support import REAL_CACHE
from vrollout.cli.commands import main

pytestmark = pytest.mark.real_model


def test_cli_analyze_file(tmp_path, capsys):
    lines = [
        json.dumps({"prompt": "What is 17*23?", "response": "17*23 = 381.", "id": "a"}),
        "{not json",
        json.dumps({"prompt_ids": [1, 2, 3], "response_ids": [5, 10**7]}),
        "",
        json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
        ),
    ]
    src = tmp_path / "runs.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "results.jsonl"
    argv = ["analyze", str(src), "--out", str(out), "--privileged", "17*23 = 391"]
    argv += ["--database", str(tmp_path / "db.sqlite3"), "--cache-dir", str(REAL_CACHE)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1  # some lines failed
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["job"]["line"] for r in results] == [1, 5]
    assert results[0]["trajectory"]["id"] == "a" and results[0]["teacher"]["privileged"] == "17*23 = 391"
    assert f"{src}:2: invalid JSON" in err
    assert f"{src}:3: response_ids[1] = 10000000 is outside the vocabulary" in err
    assert "2 analysed, 2 failed" in err


def test_cli_example_file(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = ["analyze", "examples/trajectories.jsonl", "--out", str(out), "--no-store"]
    assert main(argv + ["--cache-dir", str(REAL_CACHE), "--continuation-tokens", "4"]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["trajectory"]["id"] for r in results] == ["mult-wrong", "capital", "trl", "generate"]
    assert results[3]["generation"]["max_new_tokens"] == 16
    assert all(s["teacher_continuation"] for r in results for s in r["steps"])
    assert "4 analysed, 0 failed" in capsys.readouterr().err


def test_cli_analyze_into_a_folder(tmp_path, capsys):
    import pandas as pd

    src = tmp_path / "runs.jsonl"
    lines = [
        {"id": "wrong", "prompt": "What is 17*23?", "response": "17*23 = 381.", "reference_answer": "391"},
        {"id": "xss", "prompt": "Say <b>hi</b>", "response": "<script>alert(1)</script>"},
    ]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n{bad\n")
    out = tmp_path / "report"
    argv = ["analyze", str(src), "--out", str(out), "--no-store", "--cache-dir", str(REAL_CACHE)]
    assert main(argv + ["--privileged", "17*23 = 391"]) == 1
    assert {p.name for p in out.iterdir()} == {
        "analyses.jsonl", "summaries.csv", "summaries.jsonl", "steps.parquet", "figures.json", "report.html",
        "headline.csv", "headline.md", "headline.tex", "objectives.csv",
    }  # fmt: skip
    steps = pd.read_parquet(out / "steps.parquet")
    summaries = pd.read_csv(out / "summaries.csv")
    assert len(steps) == summaries["tokens"].sum() and list(summaries["trajectory_id"]) == ["wrong", "xss"]
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and "Plotly.react" in html and "line 3: invalid JSON" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    headline = pd.read_csv(out / "headline.csv").set_index("measure")
    assert headline.loc["kl_top_5pct", "all_median"] == pytest.approx(summaries["kl_top_5pct"].median())
    assert headline.loc["kl_gini", "incorrect_median"] == pytest.approx(summaries["kl_gini"][0])  # "wrong"
    assert headline.loc["agreement_rate", "all_n"] == 2 and headline.loc["agreement_rate", "correct_n"] == 0
    md = (out / "headline.md").read_text()
    assert md.startswith("| measure | all (n=2) | correct (n=0) | incorrect (n=1) |")
    top5 = md.splitlines()[3]  # the second measure: top 5% of tokens
    assert top5.startswith("| top 5% of tokens carry") and top5.split(" | ")[1] in html  # the same cell
    assert 'id="headline-table"' in html and "Gini of reverse KL" in html
    assert "2 analysed, 1 failed" in capsys.readouterr().err
