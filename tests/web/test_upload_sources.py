"""The upload reads Parquet (by its magic bytes) and renames columns by the form fields `map` and
`from`: the same trajectories as JSONL, as Parquet and under other column names give the same
analyses; bad mappings, missing columns and unreadable Parquet get clear errors, never a 500."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from support import assert_error, upload, wait_done

ROWS = [
    {"id": "a", "prompt": "What is 2+2?", "response": "2+2 = 5", "privileged": "4"},
    {"id": "b", "prompt": "hi", "response": "hello the world", "privileged": "be brief"},
]
THEIRS = [
    {"uid": r["id"], "q": r["prompt"], "a": r["response"], "hint": {"text": r["privileged"]}} for r in ROWS
]
MAP = "id=uid,prompt=q,response=a,privileged=hint.text"


def parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def analyses(client, resp) -> list[tuple]:
    assert resp.status_code == 201, resp.text
    job = wait_done(client, resp.json()["job"]["id"])
    assert job["done"] == len(ROWS), job
    items = client.get(f"/api/jobs/{job['id']}/items").json()
    found = [client.get(f"/api/analyses/{item['analysis_id']}").json() for item in items]
    return [
        (
            a["trajectory"]["id"],
            a["teacher"]["privileged"],
            a["response_ids"],
            [s["reverse_kl"] for s in a["steps"]],
        )
        for a in found
    ]


def test_jsonl_parquet_and_mapped_columns_give_the_same_analyses(tiny_client):
    expected = analyses(tiny_client, upload(tiny_client, "\n".join(json.dumps(r) for r in ROWS)))
    assert [e[0] for e in expected] == ["a", "b"]
    assert analyses(tiny_client, upload(tiny_client, parquet(ROWS), name="runs.parquet")) == expected
    mapped = upload(tiny_client, parquet(THEIRS), name="theirs.parquet", map=MAP)
    assert analyses(tiny_client, mapped) == expected
    mapped = upload(tiny_client, "\n".join(json.dumps(r) for r in THEIRS), map=MAP, **{"from": "auto"})
    assert analyses(tiny_client, mapped) == expected


def test_bad_mappings_and_presets_are_422(tiny_client):
    body = "\n".join(json.dumps(r) for r in THEIRS)
    assert_error(upload(tiny_client, body, map="prompt"), 422, "'prompt' is not field=column")
    assert_error(upload(tiny_client, body, map="promt=q"), 422, "'promt' is not a line field", "'prompt'")
    assert_error(upload(tiny_client, body, **{"from": "verll"}), 422, "unknown preset 'verll'", "verl, trl")


def test_a_missing_column_rejects_its_line(tiny_client):
    lacking = {k: v for k, v in THEIRS[1].items() if k != "q"}
    resp = upload(tiny_client, parquet([THEIRS[0], lacking]), name="theirs.parquet", map=MAP)
    assert resp.status_code == 201, resp.text
    (rejected,) = resp.json()["rejected"]
    # Arrow writes a missing key as null: the row has the column, empty, and validation says so
    assert rejected["line"] == 2 and "prompt" in rejected["error"]
    resp = upload(tiny_client, "\n".join(json.dumps(r) for r in (THEIRS[0], lacking)), map=MAP)
    assert resp.json()["rejected"] == [
        {"line": 2, "error": "no column 'q' (mapped to prompt); its columns: a, hint, uid"}
    ]
    resp = upload(
        tiny_client, json.dumps({"input": "2+2?", "output": "4", "score": 1.0, "step": 3}), **{"from": "verl"}
    )
    assert_error(resp, 422, "line 1: not a verl row: missing column(s) gts")


def test_unreadable_parquet_is_422(tiny_client):
    data = parquet(ROWS)
    assert_error(
        upload(tiny_client, data[:-20], name="x.parquet"), 422, "x.parquet: not a readable Parquet file"
    )
    assert_error(upload(tiny_client, b"PAR1 not really"), 422, "not a readable Parquet file")


def test_the_upload_page_has_the_mapping_and_from_fields(tiny_client):
    page = tiny_client.get("/upload").text
    assert 'name="map"' in page and '<select id="from" name="from">' in page
    for preset in ("auto", "verl", "trl", "tinker"):
        assert f'<option value="{preset}">' in page
