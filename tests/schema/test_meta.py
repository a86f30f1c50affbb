"""`meta` is kept as given, so it is refused (422, naming `meta`) where it could not be served
back as JSON: nested deeper than MAX_META_DEPTH (the encoder stops at 254 levels) or holding a
string that is not Unicode. Nothing is stored then, and what is stored can always be read back
(issue #24, item 9)."""

from __future__ import annotations

import json

import pytest
from support import GOOD, assert_error, upload
from vrollout.errors import BadTrajectory
from vrollout.inputs.validation import validate
from vrollout.schema.requests import MAX_META_DEPTH, AnalyzeRequest, PedagogicalRequest
from vrollout.storage.store import Store


def nested(levels: int) -> dict:
    """`levels` objects, each inside the one before."""
    meta: dict = {"leaf": 1}
    for _ in range(levels - 1):
        meta = {"a": meta}
    return meta


def depth(value) -> int:
    inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + max((depth(v) for v in inner if isinstance(v, dict | list)), default=0)


def test_the_limit_counts_objects_and_arrays():
    assert depth(nested(MAX_META_DEPTH)) == MAX_META_DEPTH
    assert validate(AnalyzeRequest, {**GOOD, "meta": nested(MAX_META_DEPTH)}).meta == nested(MAX_META_DEPTH)
    as_lists = {"a": json.loads("[" * (MAX_META_DEPTH - 1) + "]" * (MAX_META_DEPTH - 1))}
    assert validate(AnalyzeRequest, {**GOOD, "meta": as_lists}).meta == as_lists
    for too_deep in (
        nested(MAX_META_DEPTH + 1),
        {"a": json.loads("[" * MAX_META_DEPTH + "]" * MAX_META_DEPTH)},
    ):
        for model in (AnalyzeRequest, PedagogicalRequest):
            with pytest.raises(
                BadTrajectory, match=f"meta: nested deeper than the limit of {MAX_META_DEPTH}"
            ):
                validate(model, {**GOOD, "meta": too_deep})


def test_the_api_refuses_deep_meta_and_stores_nothing(tiny_client):
    resp = tiny_client.post("/api/analyze", json={**GOOD, "meta": nested(300)})
    assert_error(resp, 422, "meta", f"limit of {MAX_META_DEPTH} levels")
    assert tiny_client.get("/api/analyses").json()["total"] == 0
    ok = tiny_client.post("/api/analyze", json={**GOOD, "meta": nested(MAX_META_DEPTH)})
    assert ok.status_code == 200, ok.text
    assert tiny_client.get(f"/api/analyses/{ok.json()['id']}").json()["trajectory"]["meta"] == nested(
        MAX_META_DEPTH
    )


def test_the_api_refuses_meta_that_is_not_unicode(tiny_client):
    for meta in ('{"k": "\\ud800"}', '{"\\udfff": 1}', '{"k": [["x\\ud800y"]]}'):
        body = '{"prompt": "hi", "response": "hello", "meta": ' + meta + "}"
        resp = tiny_client.post("/api/analyze", content=body, headers={"content-type": "application/json"})
        assert_error(resp, 422, "meta: a string in it is not valid Unicode")
    assert tiny_client.get("/api/analyses").json()["total"] == 0


def test_an_uploaded_line_with_deep_meta_is_refused(tiny_client):
    lines = [
        {**GOOD, "meta": nested(300)},
        {**GOOD, "extra_key": nested(300)},  # an unknown key is kept in meta: held to the same limit
        GOOD,
    ]
    resp = upload(tiny_client, "\n".join(json.dumps(line) for line in lines) + "\n")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["accepted"] == 1
    assert [r["line"] for r in body["rejected"]] == [1, 2]
    for rejected in body["rejected"]:
        assert f"meta: nested deeper than the limit of {MAX_META_DEPTH}" in rejected["error"]


def test_the_store_refuses_what_it_could_not_serve_back(tmp_path):
    """A defence behind validation: the store encodes as the routes do, so an analysis that could
    not be served is refused, not stored to fail on every read."""
    store = Store(tmp_path / "db.sqlite3")
    analysis = {
        "id": "x",
        "created_at": "2025-01-01T00:00:00Z",
        "student": {"model": "s"},
        "teacher": {"model": "t"},
        "summary": {"tokens": 0},
        "response_text": "",
        "steps": [],
        "trajectory": {"meta": nested(300)},
    }
    with pytest.raises(ValueError, match="depth"):
        store.save(analysis)
    assert store.list()[1] == 0
