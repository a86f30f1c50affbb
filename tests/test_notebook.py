"""The notebook API (`import vrollout; vrollout.load()`): on the tiny model against the JSON API,
and once on the embedded default model."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import plotly.io
import pytest
import vrollout
from support import REAL_CACHE, tiny_settings
from vrollout.errors import BadTrajectory
from vrollout.pipeline.analyzer import Analyzer
from vrollout.schema.analysis import Step

EXAMPLE = {"prompt": "What is 17*23?", "response": "17*23 = 381.", "privileged": "17*23 = 391"}
XSS = '<script>alert(1)</script> "><img src=x onerror=alert(2)> & done'


@pytest.fixture
def vr(tiny, tmp_path) -> vrollout.VirtualRollout:
    return vrollout.VirtualRollout(Analyzer(tiny, tiny_settings(tmp_path)))


def without_identity(analysis: dict) -> dict:
    return {k: v for k, v in analysis.items() if k not in ("id", "created_at")}


def test_import_does_not_load_torch():
    code = (
        "import sys, vrollout; vrollout.load; vrollout.Analysis; vrollout.VirtualRollout;"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'fastapi', 'pandas', 'plotly')"
        " if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_analyze_is_the_api_json(vr, tiny_client):
    body = {**EXAMPLE, "top_k": 3, "continuation_tokens": 2}
    api = tiny_client.post("/api/analyze", json=body).json()
    by_keywords = vr.analyze(**body)
    by_dict = vr.analyze(EXAMPLE, top_k=3, continuation_tokens=2)
    assert without_identity(by_keywords.to_dict()) == without_identity(api)
    assert without_identity(by_dict.to_dict()) == without_identity(api)
    a = by_keywords
    assert a.summary == api["summary"] and a.steps == api["steps"]
    assert a.virtual_rollout.text == api["virtual_rollout"]["text"]
    assert a.virtual_rollout.token_ids == [s["teacher_top1_id"] for s in api["steps"]]
    assert a["teacher"]["privileged"] == "17*23 = 391" and a.response_text == "17*23 = 381."
    assert f"tokens={api['summary']['tokens']}" in repr(a)
    assert a.to_dict() is not a.to_dict()  # a copy: changing it changes nothing here


def test_a_keyword_overrides_the_dict_and_errors_are_the_apis(vr):
    a = vr.analyze(EXAMPLE, top_k=1)
    assert all(len(s["teacher_topk"]) == 1 for s in a.steps)
    with pytest.raises(BadTrajectory, match="must be a JSON object"):
        vr.analyze(["not", "a", "trajectory"])
    with pytest.raises(BadTrajectory, match="top_k"):
        vr.analyze(EXAMPLE, top_k=10_000)


def test_repr_html_is_self_contained_and_escaped(vr):
    a = vr.analyze(prompt="Say something.", response=XSS)
    page = a._repr_html_()
    assert "<script" not in page and "<img" not in page  # the model's text is shown, not run
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the response text, escaped
    for attr in ("src=", "href=", "url(", "@import", "<link"):
        assert attr not in page.replace("src=x", ""), attr  # nothing fetched: works offline
    assert page.startswith('<div class="vr-nb"><style>')
    assert page.count('class="vr-col') == a.summary["tokens"]
    assert page.count("vr-col vr-div") == a.summary["divergences"]
    assert f"<td>divergences</td><td>{a.summary['divergences']}</td>" in page


def test_to_pandas_has_one_row_per_step(vr):
    a = vr.analyze(EXAMPLE, top_k=2, continuation_tokens=1)
    df = a.to_pandas()
    assert list(df.columns) == list(a.steps[0])
    # Every documented step field, less those only a vLLM analysis carries (its noise bounds)
    # and those only a teacher with another tokenizer carries (its spans).
    elsewhere = {"uncertain", "span", "span_start"}
    server_only = {name for name in Step.__annotations__ if name in elsewhere or name.endswith("_interval")}
    assert list(df.columns) == [name for name in Step.__annotations__ if name not in server_only]
    assert len(df) == a.summary["tokens"] == len(a.steps)
    for name in ("position", "token", "reverse_kl", "teacher_logprob", "advantage", "agree", "teacher_rank"):
        assert df[name].tolist() == [s[name] for s in a.steps], name
    assert df.loc[3, "teacher_topk"] == a.steps[3]["teacher_topk"]
    assert df.loc[3, "teacher_continuation"] == a.steps[3]["teacher_continuation"]
    assert df["reverse_kl"].sum() == pytest.approx(a.summary["reverse_kl_total"])


def test_figure_is_the_pages(vr, tiny_client):
    api = tiny_client.post("/api/analyze", json=EXAMPLE).json()
    served = plotly.io.from_json(tiny_client.get(f"/api/analyses/{api['id']}/figure").text)
    assert vrollout.Analysis(api).figure().to_dict() == served.to_dict()  # a server's analysis
    assert vr.analyze(EXAMPLE).figure().to_dict() == served.to_dict()


def lines_of_mixed_length() -> list:
    words = ["the", "teacher", "takes", "the", "wheel", "only", "where", "it", "must"]
    lines = [{"prompt": f"q{i}", "response": " ".join(words[: 1 + (i * 5) % 9])} for i in range(7)]
    lines[2] = json.dumps(lines[2])  # a JSONL line as text, as an open file gives them
    lines.insert(4, "  \n")  # a blank line is skipped
    return lines


def test_analyze_many_yields_in_order_in_batches(vr, monkeypatch, capsys):
    batches = []
    run_batch = vr.analyzer.run_batch
    monkeypatch.setattr(vr.analyzer, "run_batch", lambda p, e: batches.append(len(p)) or run_batch(p, e))
    lines = lines_of_mixed_length()
    results = list(vr.analyze_many(lines, top_k=2, privileged="P"))
    objects = [json.loads(x) if isinstance(x, str) else x for x in lines if not str(x).isspace()]
    assert [a.response_text for a in results] == [x["response"] for x in objects]
    assert batches and max(batches) > 1  # short lines shared padded batches
    for a, obj in zip(results, objects, strict=True):
        alone = vr.analyze(obj, top_k=2, privileged="P")
        assert a["teacher"]["privileged"] == "P" and len(a.steps[0]["teacher_topk"]) == 2
        assert [s["reverse_kl"] for s in a.steps] == pytest.approx(
            [s["reverse_kl"] for s in alone.steps], abs=1e-4
        )
        assert a.virtual_rollout == alone.virtual_rollout
    assert "traj" in capsys.readouterr().err  # the progress bar


def test_analyze_many_names_a_bad_trajectory(vr):
    lines = [
        {"prompt": "a", "response": "hello"},
        {"response": "no prompt"},
        {"prompt": "b", "response": "hi"},
    ]
    many = vr.analyze_many(lines, progress=False)
    with pytest.raises(BadTrajectory, match="trajectory 1: "):
        list(many)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = list(vr.analyze_many(lines, progress=False, errors="skip"))
    assert [a.response_text for a in kept] == ["hello", "hi"]
    assert any("trajectory 1 skipped" in str(w.message) for w in caught)
    with pytest.raises(BadTrajectory, match="trajectory 0: not valid JSON"):
        list(vr.analyze_many(["{oops"], progress=False))


def test_lines_are_checked_as_file_lines(vr):
    with pytest.raises(BadTrajectory, match="did you mean `privileged`"):
        list(vr.analyze_many([{**EXAMPLE, "privilged": "391"}], progress=False))
    with pytest.warns(UserWarning, match="trajectory 0: `epoch` is not a field: kept in meta"):
        (a,) = vr.analyze_many([{**EXAMPLE, "epoch": 7}], progress=False)
    assert a["trajectory"]["meta"] == {"epoch": 7}
    with pytest.raises(BadTrajectory, match="privilged"):
        vr.analyze(EXAMPLE, privilged="391")  # one trajectory: the API's closed schema
    with pytest.raises(TypeError, match="iterable of trajectories"):
        next(vr.analyze_many(json.dumps(EXAMPLE)))


def test_load_from_a_folder_writes_nothing_here(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "tiny-model"
    tiny.student.model.save_pretrained(folder)
    tiny.student.tokenizer.save_pretrained(folder)
    here = tmp_path / "notebook"
    here.mkdir()
    monkeypatch.chdir(here)
    vr = vrollout.load(student=str(folder), device="cpu", dtype="float32", max_response_tokens=100)
    assert vr.analyzer.store is None and vr.analyzer.settings.max_response_tokens == 100
    assert vr.models["student"]["name"] == "tiny-model" and "same weights" in repr(vr)
    a = vr.analyze(EXAMPLE)
    b = vrollout.VirtualRollout(Analyzer(tiny, tiny_settings(tmp_path))).analyze(EXAMPLE)
    assert [s["reverse_kl"] for s in a.steps] == pytest.approx([s["reverse_kl"] for s in b.steps], abs=1e-5)
    list(vr.analyze_many([EXAMPLE, EXAMPLE], progress=False))
    assert list(here.iterdir()) == []  # no database, no cache, nothing


def test_load_refuses_an_unknown_setting():
    with pytest.raises(TypeError, match="'studnet' \\(did you mean 'student'\\?\\)"):
        vrollout.load(studnet="x")


@pytest.mark.real_model
def test_the_readme_example_on_the_default_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vr = vrollout.load(cache_dir=REAL_CACHE)
    a = vr.analyze(prompt="What is 17*23?", response="17*23 = 381.", privileged="17*23 = 391")
    first = a.summary["first_divergence"]
    assert "".join(s["token"] for s in a.steps[:first]) == "17*23 = 3"  # at the wrong digit
    assert a.steps[first]["teacher_top1"] == "9" and a.summary["agreement_rate"] < 1
    assert a.virtual_rollout.text == "".join(s["teacher_top1"] for s in a.steps)
    assert "9" in a._repr_html_() and len(a.to_pandas()) == a.summary["tokens"]
    assert list(tmp_path.iterdir()) == []
