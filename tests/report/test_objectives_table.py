"""The distillation objectives' table per dataset (#26, docs/objectives.md): one row per
analysis x objective, in the CLI folder's objectives.csv and GET /api/jobs/{id}/objectives,
both the analyses' own summary.objectives (tiny model)."""

from __future__ import annotations

import csv
import io
import json

from support import upload, wait_done
from vrollout.cli import main
from vrollout.report.dataset import OBJECTIVE_COLUMNS, objective_rows

LINES = [
    {"prompt": "hi", "response": "hello there", "privileged": "say hello"},
    {
        "prompt": "hi",
        "response": "hello the world",
        "privileged": "say hello",
        "objectives": ["k1", "clipped_reverse_kl"],
    },
]


def expected(analyses):
    return [
        (a["id"], name, {k: v for k, v in summary.items() if k in OBJECTIVE_COLUMNS})
        for a in analyses
        for name, summary in a["summary"]["objectives"].items()
    ]


def as_number(text):
    return None if text == "" else float(text)


def test_the_cli_folder_has_objectives_csv(tiny_folder, tmp_path, capsys):
    src = tmp_path / "runs.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    out = tmp_path / "results"
    common = ["--student", str(tiny_folder), "--device", "cpu", "--no-store", "--no-noise-floor"]
    assert main(["analyze", str(src), "--out", str(out), *common]) == 0, capsys.readouterr().err
    analyses = [json.loads(t) for t in (out / "analyses.jsonl").read_text().splitlines()]
    with (out / "objectives.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == OBJECTIVE_COLUMNS
    want = expected(analyses)
    assert len(rows) == len(want) == len(analyses[0]["summary"]["objectives"]) + 2
    for row, (analysis_id, name, fields) in zip(rows, want, strict=True):
        assert (row["analysis_id"], row["objective"]) == (analysis_id, name)
        for key in ("total", "bias", "spearman", "top5pct_overlap", "gini"):
            got, exact = as_number(row[key]), fields.get(key)
            assert got == exact or abs(got - exact) <= 1e-9 * max(1.0, abs(exact)), (name, key)
    clipped = [r for r in rows if r["objective"] == "clipped_reverse_kl"]
    assert clipped and all(r["clipped_share"] != "" for r in clipped)
    assert all(r["clipped_share"] == "" for r in rows if not r["objective"].startswith("clipped"))
    assert [r["line"] for r in rows[-2:]] == ["2", "2"]


def test_the_job_view_carries_the_same_table(tiny_client):
    created = upload(tiny_client, "".join(json.dumps(line) + "\n" for line in LINES))
    job = wait_done(tiny_client, created.json()["job"]["id"])
    items = tiny_client.get(f"/api/jobs/{job['id']}/items").json()
    analyses = [tiny_client.get(f"/api/analyses/{i['analysis_id']}").json() for i in items]
    rows = tiny_client.get(f"/api/jobs/{job['id']}/objectives").json()
    assert [(r["analysis_id"], r["objective"]) for r in rows] == [(a, n) for a, n, _ in expected(analyses)]
    for row, (_, _, fields) in zip(rows, expected(analyses), strict=True):
        assert {k: row[k] for k in fields} == fields
        assert set(row) == set(OBJECTIVE_COLUMNS)
    download = tiny_client.get(f"/api/jobs/{job['id']}/objectives?format=csv")
    assert download.headers["content-disposition"].endswith(f'{job["id"]}-objectives.csv"')
    assert len(list(csv.DictReader(io.StringIO(download.text)))) == len(rows)
    assert tiny_client.get(f"/api/jobs/{job['id']}/objectives?format=xml").status_code == 422
    assert tiny_client.get("/api/jobs/nope/objectives").status_code == 404


def test_objective_rows_skip_analyses_without_objectives():
    old = {"analysis_id": "a", "line": 1, "trajectory_id": None}  # a digest from before #26
    new = {
        "analysis_id": "b",
        "line": 2,
        "trajectory_id": "t",
        "objectives": {"k1": {"total": 1.5, "bias": 0.5}},
    }
    rows = list(objective_rows([old, new]))
    assert rows == [
        {"analysis_id": "b", "line": 2, "trajectory_id": "t", "objective": "k1", "total": 1.5, "bias": 0.5,
         "spearman": None, "top5pct_overlap": None, "gini": None, "clipped_share": None}
    ]  # fmt: skip
