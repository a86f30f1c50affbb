"""A teacher with another tokenizer through the API and on the analysis page: the alignment view
(spans, where the tokenizations differ, model text escaped), the options refused with a 422,
and the same-tokenizer page unchanged (tiny models; the browser test opens the page)."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from support import REPO, assert_error, tiny_settings, upload, wait_done
from support.cross import cross_pair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
BODY = {"prompt": "Say hello", "response": f"héllo the ☃ world {XSS} hello there", "privileged": "hint"}


@pytest.fixture(scope="module")
def cross_client(tmp_path_factory):
    settings = tiny_settings(tmp_path_factory.mktemp("cross"))
    app = create_app(settings, analyzer=Analyzer(cross_pair(), settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def analysis(cross_client):
    resp = cross_client.post("/api/analyze", json=BODY)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_api_answers_with_an_alignment(cross_client, analysis):
    al = analysis["alignment"]
    assert analysis["response_text"] == BODY["response"]
    assert "".join(s["text"] for s in al["spans"]) == BODY["response"]
    assert al["estimated"] == ["reverse_kl", "forward_kl", "teacher_mass_on_student_topk"]
    assert [x["span"] for x in analysis["steps"]] == sorted(x["span"] for x in analysis["steps"])
    assert sum(x["span_start"] for x in analysis["steps"]) == len(al["spans"])
    models = cross_client.get("/api/models").json()
    assert (
        models["cross_tokenizer"] is True
        and models["teacher"]["vocab_size"] != models["student"]["vocab_size"]
    )
    stored = cross_client.get(f"/api/analyses/{analysis['id']}").json()
    assert stored["alignment"] == al


@pytest.mark.parametrize(
    ("path", "extra", "words"),
    [
        ("/api/analyze", {"continuation_tokens": 4}, "continuation_tokens"),
        ("/api/analyze", {"recovery": True, "reference_answer": "x"}, "recovery"),
        ("/api/pedagogical", {}, "a pedagogical rollout"),
    ],
)
def test_what_needs_one_vocabulary_is_a_422(cross_client, path, extra, words):
    body = {"prompt": "hi", "privileged": "x", **extra}
    if path == "/api/analyze":
        body["response"] = "hello"
    assert_error(cross_client.post(path, json=body), 422, words, "cannot be defined across two vocabularies")


def test_the_page_shows_the_spans_escaped(cross_client, analysis):
    html = cross_client.get(f"/analyses/{analysis['id']}").text
    assert 'id="alignment"' in html and 'id="cross-tokenizer"' in html
    assert html.count("data-span=") == len(analysis["alignment"]["spans"])
    assert html.count('class="span differs') == sum(s["differs"] for s in analysis["alignment"]["spans"])
    assert "<script>window.__xss" not in html and "<img src=x" not in html
    assert 'id="pedagogical"' not in html  # a pedagogical rollout is not defined across vocabularies


def test_the_same_tokenizer_page_is_unchanged(tiny_client):
    a = tiny_client.post("/api/analyze", json={"prompt": "hi", "response": "hello the world"}).json()
    assert "alignment" not in a and all("span" not in x for x in a["steps"])
    html = tiny_client.get(f"/analyses/{a['id']}").text
    assert 'id="alignment"' not in html and 'id="cross-tokenizer"' not in html and 'id="pedagogical"' in html


@pytest.mark.browser
def test_the_alignment_view_in_a_browser(cross_client, analysis, browser, tmp_path):
    """The one-file download opened from disk: one block per span, the differing ones outlined,
    steps inside a span show no teacher prediction, and no model text ran as markup."""
    path = tmp_path / "analysis.html"
    path.write_bytes(cross_client.get(f"/analyses/{analysis['id']}/download").content)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    spans = analysis["alignment"]["spans"]
    assert page.locator("#spans .span").count() == len(spans)
    differs = page.locator("#spans .span.differs")
    assert differs.count() == sum(s["differs"] for s in spans) > 0
    assert page.eval_on_selector("#spans .span.differs", "e => getComputedStyle(e).outlineStyle") == "solid"
    first = next(s for s in spans if s["differs"])
    student_tokens = [x["token"] for x in analysis["steps"][first["student"][0] : first["student"][1]]]
    shown = page.locator(f"#spans .span[data-span='{spans.index(first)}'] .sp-stu i").all_text_contents()
    assert len(shown) == len(student_tokens)
    inside = next(x for x in analysis["steps"] if not x["span_start"])
    assert page.text_content(f"#strip .col[data-i='{inside['position']}'] .tea") == "·"
    page.click(f"#strip .col[data-i='{inside['position']}']")
    assert "teacher rank –" in page.text_content("#selected")
    assert page.evaluate("window.__xss") is None
    assert XSS in page.text_content("#response-text")
    assert errors == []
    context.close()


def test_every_cross_tokenizer_field_is_in_metrics_docs(analysis):
    """Each field a cross-tokenizer analysis adds is named as code in docs/metrics.md."""
    text = (REPO / "docs" / "metrics.md").read_text()
    section = text[text.index("## Teachers with another tokenizer") :]
    alignment = analysis["alignment"]
    names = {f"alignment.{k}" for k in alignment} | set(alignment["spans"][0]) | {"span", "span_start"}
    names |= {"reverse_kl_estimate", "spans", "spans_differ", "cross_tokenizer"}
    missing = sorted(n for n in names if f"`{n}`" not in section and f"`{n}`," not in section)
    assert not missing, f"missing from docs/metrics.md 'Teachers with another tokenizer': {missing}"


def test_a_job_with_another_tokenizer_and_its_exports(cross_client, tmp_path):
    """A file through a job: each line aligned on its own; the summaries, headline, preflight and
    step exports (Parquet, with the nulls inside spans) answer, and the job page renders."""
    lines = [
        json.dumps({"prompt": "hi", "response": f"héllo the world {n} 😀", "privileged": "x"})
        for n in range(3)
    ]
    job = upload(cross_client, "\n".join(lines) + "\n")
    assert job.status_code == 201, job.text
    done = wait_done(cross_client, job.json()["job"]["id"], timeout=120)
    assert done["state"] == "done" and done.get("failed", 0) == 0, done
    job_id = done["id"]
    for path in ("summaries", "summaries?format=csv", "headline", "preflight", "steps?format=jsonl"):
        assert cross_client.get(f"/api/jobs/{job_id}/{path}").status_code == 200, path
    table = pq.read_table(io.BytesIO(cross_client.get(f"/api/jobs/{job_id}/steps?format=parquet").content))
    ranks = table.column("teacher_rank").to_pylist()
    assert None in ranks and any(r is not None for r in ranks)
    assert cross_client.get(f"/jobs/{job_id}").status_code == 200


def test_error_localization_with_another_tokenizer(cross_client):
    """ProcessBench-shaped lines scored by a teacher of another tokenizer: the localization
    table is computed (no teacher rank inside a span counts as rank 1, like no divergence)."""
    rows = [
        {"prompt": f"q{n}", "steps": ["1 + 1 = 3 😀.", "So the answer is 3."], "label": n % 2}
        for n in range(4)
    ]
    job = upload(cross_client, "".join(json.dumps(r) + "\n" for r in rows))
    assert job.status_code == 201, job.text
    done = wait_done(cross_client, job.json()["job"]["id"], timeout=120)
    assert done["state"] == "done" and done["failed"] == 0, done
    resp = cross_client.get(f"/api/jobs/{done['id']}/localization?bootstrap=50&folds=2")
    assert resp.status_code == 200, resp.text


def test_the_hover_inside_a_span_says_there_is_no_teacher_prediction(analysis):
    from vrollout.report.figures import figure_dict

    steps = analysis["steps"]
    hovers = figure_dict(analysis)["data"][0]["hovertext"]
    inside = [h for s, h in zip(steps, hovers, strict=True) if s["teacher_rank"] is None]
    starts = [h for s, h in zip(steps, hovers, strict=True) if s["teacher_rank"] is not None]
    assert inside and starts and not any("None" in h for h in hovers)
    assert all("inside a teacher token" in h and "rank" not in h and "teacher top-k" not in h for h in inside)
    assert all("rank " in h and "inside a teacher token" not in h for h in starts)
