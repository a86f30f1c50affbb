"""Deleting analyses and jobs (API and pages), retention, and paging bounds."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from fastapi.testclient import TestClient
from support import GOOD, assert_error, tiny_settings, upload, wait_done
from vrollout.pipeline.analyzer import Analyzer
from vrollout.storage.jobs import Jobs
from vrollout.storage.store import Store
from vrollout.web.app import create_app

LONG = {"prompt": "x", "response": "hello the world " * 30}


def test_delete_an_analysis(tiny_client):
    kept = tiny_client.post("/api/analyze", json=GOOD).json()
    gone = tiny_client.post("/api/analyze", json=GOOD).json()
    r = tiny_client.delete(f"/api/analyses/{gone['id']}")
    assert r.status_code == 200 and r.json() == {"ok": True, "id": gone["id"]}
    assert_error(tiny_client.get(f"/api/analyses/{gone['id']}"), 404, gone["id"])
    assert_error(tiny_client.delete(f"/api/analyses/{gone['id']}"), 404, "no stored analysis")
    assert [a["id"] for a in tiny_client.get("/api/analyses").json()["items"]] == [kept["id"]]


def test_delete_a_job_with_its_analyses(tiny_client):
    single = tiny_client.post("/api/analyze", json=GOOD).json()
    job_id = upload(tiny_client, "\n".join([json.dumps(GOOD)] * 3)).json()["job"]["id"]
    wait_done(tiny_client, job_id)
    assert tiny_client.get("/api/analyses").json()["total"] == 4
    r = tiny_client.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json() == {"ok": True, "id": job_id, "analyses_deleted": 3}
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/items", f"/api/jobs/{job_id}/summaries"):
        assert_error(tiny_client.get(path), 404, job_id)
    assert [a["id"] for a in tiny_client.get("/api/analyses").json()["items"]] == [single["id"]]
    assert tiny_client.get("/api/jobs").json() == []


def test_deleting_a_running_job_cancels_it_and_stores_nothing_more(tiny_client):
    job_id = upload(tiny_client, "\n".join([json.dumps(LONG)] * 40)).json()["job"]["id"]
    deadline = time.time() + 60
    while tiny_client.get(f"/api/jobs/{job_id}").json()["done"] < 1:
        assert time.time() < deadline
        time.sleep(0.02)
    assert tiny_client.delete(f"/api/jobs/{job_id}").status_code == 200
    runner = tiny_client.app.state.runner
    while runner.cancel_requested:  # the batch that was running ends: the runner stops the job
        assert time.time() < deadline
        time.sleep(0.05)
    assert tiny_client.get("/api/analyses").json()["total"] == 0  # nothing of that batch stored
    next_job = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    assert wait_done(tiny_client, next_job)["done"] == 1  # the runner went on


def test_a_stream_of_a_deleted_job_ends(tiny_client):
    job_id = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    wait_done(tiny_client, job_id)
    tiny_client.delete(f"/api/jobs/{job_id}")
    assert tiny_client.get(f"/api/jobs/{job_id}/events").status_code == 404


def test_a_cross_site_delete_is_refused(tiny_client):
    a = tiny_client.post("/api/analyze", json=GOOD).json()
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "http://evil.example"}):
        assert_error(tiny_client.delete(f"/api/analyses/{a['id']}", headers=headers), 403, "another site")
    assert tiny_client.get(f"/api/analyses/{a['id']}").status_code == 200


def test_deleting_needs_the_token_when_one_is_set(tiny, tmp_path):
    settings = tiny_settings(tmp_path, api_token="s3cret")
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        auth = {"authorization": "Bearer s3cret"}
        a = client.post("/api/analyze", json=GOOD, headers=auth).json()
        assert_error(client.delete(f"/api/analyses/{a['id']}"), 401, "API token")
        assert_error(client.delete("/api/jobs/whatever"), 401, "API token")
        assert client.delete(f"/api/analyses/{a['id']}", headers=auth).status_code == 200


def test_pages_offer_deletion(tiny_client):
    a = tiny_client.post("/api/analyze", json=GOOD).json()
    job_id = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    html = {"accept": "text/html"}
    analysis_page = tiny_client.get(f"/analyses/{a['id']}", headers=html).text
    assert 'id="delete"' in analysis_page
    assert 'id="delete"' in tiny_client.get(f"/jobs/{job_id}", headers=html).text
    assert 'id="delete"' not in tiny_client.get(f"/analyses/{a['id']}/download").text  # offline file


@pytest.mark.parametrize(
    "path",
    [
        "/api/analyses?offset=9223372036854775808",
        "/api/analyses?offset=-1",
        "/api/analyses?limit=1000000",
        "/api/analyses?limit=0",
        "/analyses?page=999999999999999999999",
        "/analyses?page=0",
    ],
)
def test_out_of_range_paging_is_a_422(tiny_client, path):
    r = tiny_client.get(path)
    assert r.status_code == 422 and r.json()["ok"] is False, r.text


def test_the_largest_offset_is_an_empty_page(tiny_client):
    r = tiny_client.get("/api/analyses?offset=9223372036854775807")
    assert r.status_code == 200 and r.json()["items"] == []


def test_retention_at_start_up(tiny, tmp_path):
    settings = tiny_settings(tmp_path, retention_days=2)
    jobs = Jobs(Store(settings.database))
    with TestClient(create_app(tiny_settings(tmp_path), analyzer=Analyzer(tiny, settings))) as client:
        old = client.post("/api/analyze", json=GOOD).json()
        new = client.post("/api/analyze", json=GOOD).json()
    three_days = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).isoformat()
    with jobs.store.connect() as db:
        db.execute("UPDATE analyses SET created_at = ? WHERE id = ?", (three_days, old["id"]))
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        deadline = time.time() + 10
        while client.get("/api/analyses").json()["total"] > 1:
            assert time.time() < deadline, "the old analysis was not deleted at start-up"
            time.sleep(0.05)
        assert client.get(f"/api/analyses/{new['id']}").status_code == 200
