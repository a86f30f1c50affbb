"""`vrollout localize` on the tiny model: the folder it writes, each metric recomputed from
predictions.jsonl (numpy, scikit-learn), bad lines named, no recovery unless asked for."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from support import REPO, tiny_settings
from vrollout.cli.localize import localize_file
from vrollout.metrics.localization import TOKEN_SCORERS
from vrollout.pipeline.analyzer import Analyzer


def make_lines(tmp_path, problems: int = 8, extra: list[str] = ()) -> str:
    script = REPO / "examples" / "make_localization_data.py"
    out = subprocess.run(
        [sys.executable, str(script), "--problems", str(problems), "--per-problem", "2", "--seed", "1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = tmp_path / "lines.jsonl"
    src.write_text(out + "".join(line + "\n" for line in extra))
    return str(src)


def args_for(src: str, out, **over) -> argparse.Namespace:
    values = dict(file=src, out=str(out), privileged=None, top_k=None, recovery=False)
    values |= dict(recovery_max_new_tokens=8, folds=4, seed=0, bootstrap=200, no_store=True)
    return argparse.Namespace(**(values | over))


def test_localize_writes_metrics_that_the_predictions_reproduce(tiny, tmp_path, capsys):
    xss = {"id": "<script>alert(1)</script>", "prompt": "q", "steps": ["1 + 1 = 2."], "label": -1}
    bad = [
        json.dumps(xss),
        json.dumps({"prompt": "q", "steps": ["a", "b"], "label": 5}),
        json.dumps({"prompt": "q", "steps": ["a", 7], "label": 0}),
        "{nope",
    ]
    src = make_lines(tmp_path, extra=bad)
    settings = tiny_settings(tmp_path)
    out = tmp_path / "out"
    code = localize_file(args_for(src, out), settings, Analyzer(tiny, settings))
    err = capsys.readouterr().err
    assert code == 1
    assert f"{src}:18: label must be -1 or a step index (0..1), got 5" in err
    assert f"{src}:19: steps[1] must be a string, got 7" in err and f"{src}:20: invalid JSON" in err
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "predictions.jsonl",
        "analyses.jsonl",
        "report.html",
    }

    metrics = json.loads((out / "metrics.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    analyses = [json.loads(line) for line in (out / "analyses.jsonl").read_text().splitlines()]
    assert len(preds) == len(analyses) == 17 and set(metrics) == {*TOKEN_SCORERS, "baselines"}
    assert all("recovery" not in a for a in analyses)  # no recovery runs unless asked for
    labels = np.array([p["label"] for p in preds])
    for p, a in zip(preds, analyses, strict=True):
        assert len(p["scores"]["max_reverse_kl"]) == len(a["trajectory"]["meta"]["steps"])
        assert p["label"] == a["trajectory"]["meta"]["label"] and p["id"] == a["trajectory"]["id"]
    for name in TOKEN_SCORERS:
        m = metrics[name]
        predicted = np.array([p["predicted"][name] for p in preds])
        err_lines, cor_lines = labels >= 0, labels < 0
        acc_error = np.mean(predicted[err_lines] == labels[err_lines])
        acc_correct = np.mean(predicted[cor_lines] == -1)
        f1 = 0 if acc_error + acc_correct == 0 else 2 * acc_error * acc_correct / (acc_error + acc_correct)
        assert m["acc_error"] == pytest.approx(acc_error) and m["acc_correct"] == pytest.approx(acc_correct)
        assert m["f1"] == pytest.approx(f1)
        y, s = [], []
        for p in preds:
            for j in range(p["label"] + 1):
                y.append(int(j == p["label"]))
                s.append(p["scores"][name][j])
        assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
        lo, hi = m["f1_interval"]
        assert lo <= m["f1"] <= hi and len(m["fold_thresholds"]) == 4
    # The largest reverse KL of each step, straight from the steps' tokens and their offsets.
    tok = tiny.student.tokenizer
    first = analyses[0]
    text = "\n\n".join(first["trajectory"]["meta"]["steps"])
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == first["response_ids"]
    ends = np.cumsum([len(s) + 2 for s in first["trajectory"]["meta"]["steps"]])
    owner = [int(np.searchsorted(ends, start, side="right")) for start, _ in enc["offset_mapping"]]
    direct = [max(s["reverse_kl"] for s, o in zip(first["steps"], owner, strict=True) if o == j)
              for j in range(len(ends))]  # fmt: skip
    assert preds[0]["scores"]["max_reverse_kl"] == pytest.approx(direct)

    html = (out / "report.html").read_text()
    assert "<script src=" not in html and "Plotly.react" in html and 'id="localization-table"' in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "line 18: label must be" in html and "max_teacher_rank" in html
    assert "17 scored, 3 failed" in err and "F1" in err


def test_recovery_drop_only_with_the_flag(tiny, tmp_path, capsys):
    src = make_lines(tmp_path, problems=2)
    settings = tiny_settings(tmp_path)
    out = tmp_path / "out"
    code = localize_file(args_for(src, out, recovery=True, folds=2), settings, Analyzer(tiny, settings))
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "recovery_drop" in metrics
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    analyses = [json.loads(line) for line in (out / "analyses.jsonl").read_text().splitlines()]
    assert all(a["recovery"]["max_new_tokens"] == 8 for a in analyses)
    assert all(set(p["scores"]["recovery_drop"]) <= {-1.0, 0.0, 1.0} for p in preds)


def test_too_few_problems_is_a_clear_error(tiny, tmp_path, capsys):
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps({"prompt": "q", "steps": ["a", "b"], "label": 1}) + "\n")
    settings = tiny_settings(tmp_path)
    assert localize_file(args_for(str(src), tmp_path / "out"), settings, Analyzer(tiny, settings)) == 2
    assert "at least 2 problems" in capsys.readouterr().err


@pytest.mark.real_model
def test_localize_on_the_default_model(tmp_path, capsys):
    from support import REAL_CACHE
    from vrollout.cli.commands import main

    src = make_lines(tmp_path, problems=2)
    out = tmp_path / "out"
    argv = ["localize", src, "--out", str(out), "--no-store", "--cache-dir", str(REAL_CACHE)]
    assert main([*argv, "--folds", "2", "--bootstrap", "100"]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert set(metrics) == {*TOKEN_SCORERS, "baselines"} and len(preds) == 4
    assert all(
        all(s is not None for s in p["scores"]["min_advantage"]) for p in preds
    )  # every step has tokens
    assert "4 scored, 0 failed" in err and "min_advantage: F1" in err
