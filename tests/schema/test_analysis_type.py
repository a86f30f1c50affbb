"""The analysis is typed once (vrollout.schema.analysis): what the pipeline emits validates against
the closed TypedDicts (a key the code adds that the type lacks fails here), and `/docs` shows
that same type, not a second description."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError
from support import tiny_settings, upload, wait_done
from support.cross import cross_pair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.schema.analysis import Analysis, Step, Summary, analysis_adapter, field_names

FULL = {
    "prompt": "What is 2+2?",
    "privileged": "2+2 = 4",
    "reference_answer": "4",
    "recovery": True,
    "continuation_tokens": 2,
    "top_k": 2,
    "generation": {"max_new_tokens": 4, "temperature": 0.7, "seed": 3},  # the student generates
    "id": "line-7",
    "score": 0.5,
    "step": 12,
    "meta": {"run": "a", "nested": {"k": [1, 2]}},
}


def validated(body: str | bytes) -> Analysis:
    """The analysis's JSON, validated strictly: types as the JSON carries them, no extra keys."""
    return analysis_adapter().validate_json(body, strict=True)


def test_a_full_analysis_validates_against_the_type(tiny_client):
    resp = tiny_client.post("/api/analyze", json=FULL)
    assert resp.status_code == 200, resp.text
    a = validated(resp.content)
    assert a["recovery"]["points"] and a["generation"] and a["preflight"]["leak"] is not None
    assert a["steps"][0]["teacher_continuation"] is not None
    stored = tiny_client.get(f"/api/analyses/{a['id']}")
    assert validated(stored.content) == a


def test_the_order_of_keys_is_the_types(tiny_client):
    """The JSON's keys come in the order the type declares them (the order the code builds)."""
    a = tiny_client.post("/api/analyze", json=FULL).json()
    declared = list(Analysis.__annotations__)
    assert list(a) == [k for k in declared if k in a]
    assert list(a["steps"][0]) == [k for k in Step.__annotations__ if k in a["steps"][0]]
    assert list(a["summary"]) == [k for k in Summary.__annotations__ if k in a["summary"]]


def test_a_jobs_analysis_validates(tiny_client):
    line = {"prompt": "hi", "response": "hello the world", "correct": True, "step": "ckpt-1"}
    job = upload(tiny_client, json.dumps(line) + "\n").json()["job"]
    assert wait_done(tiny_client, job["id"])["done"] == 1
    item = tiny_client.get(f"/api/jobs/{job['id']}/items").json()[0]
    a = validated(tiny_client.get(f"/api/analyses/{item['analysis_id']}").content)
    assert a["job"] == {"id": job["id"], "line": 1}
    assert a["verdict"] == {
        "correct": True,
        "method": "given",
        "parsed_answer": None,
        "parsed_reference": None,
        "extractor": None,
        "restated": False,
        "text_form": None,
    }


def test_an_analysis_with_a_teacher_of_another_tokenizer_validates(tmp_path):
    analyzer = Analyzer(cross_pair(), tiny_settings(tmp_path))
    a = analyzer.analyze({"prompt": "Say hello", "response": "héllo the world", "privileged": "hint"})
    checked = analysis_adapter().validate_python(a, strict=True)
    assert checked["alignment"]["spans"] and "span_start" in checked["steps"][0]


# Where a key is added: the analysis, a step, the summary and a few nested objects
PLACES = {
    "analysis": lambda a: a,
    "step": lambda a: a["steps"][0],
    "top-k entry": lambda a: a["steps"][0]["student_topk"][0],
    "summary": lambda a: a["summary"],
    "concentration": lambda a: a["summary"]["concentration"],
    "trajectory": lambda a: a["trajectory"],
    "noise floor": lambda a: a["preflight"]["noise_floor"],
}


def test_a_key_the_type_does_not_declare_fails(tiny_client):
    a = tiny_client.post("/api/analyze", json={"prompt": "hi", "response": "hello"}).json()
    analysis_adapter().validate_python(a)
    for where, place in PLACES.items():
        changed = copy.deepcopy(a)
        place(changed)["not_in_the_type"] = 1
        with pytest.raises(ValidationError, match="not_in_the_type"):
            analysis_adapter().validate_python(changed)
            pytest.fail(where)
    missing = copy.deepcopy(a)
    del missing["steps"][0]["agree"]
    with pytest.raises(ValidationError, match="agree"):
        analysis_adapter().validate_python(missing)


def test_docs_show_the_type(tiny_client):
    """/docs's schema of the analysis routes is the TypedDict's, field for field."""
    spec = tiny_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, method in (("/api/analyze", "post"), ("/api/analyses/{analysis_id}", "get")):
        ok = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/Analysis"}
    own = analysis_adapter().json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in {"Analysis": own, **own["$defs"]}.items():
        shown = schemas[name]
        assert list(shown["properties"]) == list(schema["properties"]), name
        assert shown.get("required") == schema.get("required"), name
        assert shown["additionalProperties"] is False, name


def test_field_names_walk_every_nested_type():
    names = set(field_names(Analysis))
    assert ("analysis", "steps") in names and ("analysis.steps", "teacher_topk") in names
    assert ("analysis.steps.teacher_topk", "logprob") in names
    assert ("analysis.summary.concentration", "gini") in names
    assert ("analysis.preflight.leak.virtual_rollout", "longest_copied_run") in names
    assert ("analysis.alignment.spans", "unmatched_teacher_mass") in names
