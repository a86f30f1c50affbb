"""A pedagogical job's comparison and export over HTTP (GET /api/jobs/{id}/comparison and
/rollouts): each format equals what report/pedagogical.py makes of the job's stored records,
the exports read back with pandas and `datasets`, and jobs in analysis mode get a 422."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from support import GOOD, assert_error, tiny_settings, upload, wait_done
from vrollout.pipeline.analyzer import Analyzer
from vrollout.report.pedagogical import (
    COMPARISON_COLUMNS,
    comparison_rows,
    comparison_summary,
    export_rows,
    headline_rows,
)
from vrollout.report.pedagogical_figures import comparison_figures
from vrollout.verdicts.answers import normalized_words
from vrollout.web.app import create_app

OPTIONS = {"threshold": 0.2, "sweep": "0.01,0.5", "max_new_tokens": 6}
PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi.", "Count to three."]


def rollout_words(analyzer: Analyzer, prompt: str) -> list[str]:
    """The words of the pedagogical rollout the job will make for this prompt (greedy: the
    same ids), to pick a reference it reaches."""
    request = {"prompt": prompt, "threshold": 0.2, "sweep": [0.01, 0.5], "generation": {"max_new_tokens": 6}}
    result = analyzer.pedagogical(analyzer.prepare_pedagogical(request))
    text = analyzer.pair.student.tokenizer.decode(result["response_ids"], skip_special_tokens=True)
    return [w for w in normalized_words(text).split() if any(c.isalpha() for c in w)]


@pytest.fixture(scope="module")
def done(tiny, tmp_path_factory):
    """A finished pedagogical job (one line reaching its reference, one not, one without a
    reference, one whose id a spreadsheet would run) and a finished analysis job."""
    settings = tiny_settings(tmp_path_factory.mktemp("ped-web"))
    analyzer = Analyzer(tiny, settings)
    reached = next(words[0] for p in PROMPTS if (words := rollout_words(analyzer, p)))
    lines = [
        {"id": "reach", "prompt": PROMPTS[0], "privileged": "4", "reference_answer": reached},
        {"id": "miss", "prompt": PROMPTS[1], "reference_answer": "no such answer here"},
        {"id": "bare", "prompt": PROMPTS[2]},
        {
            "id": "=HYPERLINK(1)",
            "prompt": PROMPTS[3],
            "response": "one two three",
            "reference_answer": reached,
        },
    ]
    with TestClient(create_app(settings, analyzer=analyzer), raise_server_exceptions=False) as client:
        text = "\n".join(json.dumps(line) for line in lines)
        r = upload(client, text, mode="pedagogical", **OPTIONS)
        assert r.status_code == 201, r.text
        job = wait_done(client, r.json()["job"]["id"], timeout=300)
        analysis = wait_done(client, upload(client, json.dumps(GOOD)).json()["job"]["id"])
        records = list(client.app.state.jobs.rollouts(job["id"]))
        yield client, job["id"], analysis["id"], records


def as_json(value):
    return json.loads(json.dumps(value))


def test_comparison_json_is_the_report_of_the_stored_records(done):
    client, job, _, records = done
    assert [r["id"] for r in records] == ["reach", "miss", "bare", "=HYPERLINK(1)"]
    assert records[0]["pedagogical"]["correct"] is True and records[1]["pedagogical"]["correct"] is False
    body = client.get(f"/api/jobs/{job}/comparison").json()
    summary = comparison_summary(records)
    rows = list(comparison_rows(records))
    assert body == as_json(
        {
            "summary": summary,
            "headlines": headline_rows(summary),
            "figures": comparison_figures(summary, rows),
            "rows": rows,
        }
    )
    assert body["summary"]["pedagogical"]["judged"] == 3 and body["summary"]["sweep"]


def test_comparison_csv(done):
    client, job, _, records = done
    r = client.get(f"/api/jobs/{job}/comparison", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f"{job}-comparison.csv" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(table[0]) == COMPARISON_COLUMNS
    assert [t["id"] for t in table] == ["reach", "miss", "bare", "'=HYPERLINK(1)"]  # never a formula
    frame = pd.read_csv(io.StringIO(r.text))
    assert frame.interventions.tolist() == [r["pedagogical"]["num_interventions"] for r in records]
    assert frame.opd_divergences.tolist() == [r["opd"]["divergences"] for r in records]


@pytest.mark.parametrize("style", ["prompt-completion", "messages"])
@pytest.mark.parametrize("include", ["successful", "all"])
def test_rollouts_jsonl_and_parquet(done, style, include):
    from datasets import Dataset

    client, job, analyzer_job, records = done
    analyzer = client.app.state.analyzer
    eos = {analyzer.pair.student.tokenizer.eos_token_id}
    want = as_json(list(export_rows(records, include, style, eos)))
    solved = [r["id"] for r in records if r["pedagogical"]["correct"] is True]
    assert "reach" in solved and "miss" not in solved
    assert [w["id"] for w in want] == (solved if include == "successful" else [r["id"] for r in records])
    params = {"style": style, "include": include}
    r = client.get(f"/api/jobs/{job}/rollouts", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    got = [json.loads(line) for line in r.text.splitlines()]
    assert got == want
    for line, record in zip(got, [r for r in records if r["id"] in {w["id"] for w in want}], strict=True):
        assert line["completion_ids"] == record["pedagogical"]["response_ids"]
        completion = line["messages"][-1] if style == "messages" else line["completion"][0]
        assert "<|im_end|>" not in completion["content"]  # the template adds its own end
    if style == "messages":  # format=messages: the short form of the same JSONL
        short = client.get(f"/api/jobs/{job}/rollouts", params={"format": "messages", "include": include})
        assert [json.loads(line) for line in short.text.splitlines()] == want
    r = client.get(f"/api/jobs/{job}/rollouts", params={**params, "format": "parquet"})

    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    frame = pd.read_parquet(io.BytesIO(r.content))
    assert frame.id.tolist() == [w["id"] for w in want]
    assert Dataset.from_pandas(frame).to_list() == want


def test_analysis_jobs_and_bad_parameters_are_422(done):
    client, job, analysis_job, _ = done
    for path in ("comparison", "rollouts"):
        assert_error(client.get(f"/api/jobs/{analysis_job}/{path}"), 422, "analysis mode", "mode=pedagogical")
        assert_error(client.get(f"/api/jobs/nope/{path}"), 404)
    assert_error(client.get(f"/api/jobs/{job}/comparison", params={"format": "xlsx"}), 422, "format")
    for params, word in (
        ({"format": "csv"}, "format"),
        ({"format": "messages", "style": "chat"}, "style"),
        ({"style": "chat"}, "style"),
        ({"include": "some"}, "include"),
    ):
        r = client.get(f"/api/jobs/{job}/rollouts", params=params)
        assert_error(r, 422, word)
        assert r.json()["field"] == word


def test_job_page_has_the_comparison_only_for_pedagogical_jobs(done):
    client, job, analysis_job, _ = done
    page = client.get(f"/jobs/{job}").text
    assert 'id="comparison"' in page and "/static/pedagogical_job.js" in page
    assert f"/api/jobs/{job}/rollouts?format=parquet" in page
    other = client.get(f"/jobs/{analysis_job}").text
    assert 'id="comparison"' not in other and "pedagogical_job.js" not in other
