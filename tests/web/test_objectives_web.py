"""The distillation objectives (#26) on the web: the analysis page's colour menu offers each
one, and an upload takes their options as form fields the same as the API body (in process,
tiny model)."""

from __future__ import annotations

import json
import re

from support import GOOD, upload, wait_done
from vrollout.schema.analysis import OBJECTIVE_NAMES

BODY = {"prompt": "hello", "response": "the hello the world, hello there", "privileged": "hint"}


def menu(page: str) -> list[str]:
    return re.findall(r'<input type="radio" name="metric" value="([^"]+)"', page)


def test_the_colour_menu_offers_every_objective(tiny_client):
    analysis = tiny_client.post("/api/analyze", json=BODY).json()
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    assert menu(page) == [
        "reverse_kl",
        "teacher_logprob",
        "rank",
        *(f"objectives.{n}" for n in OBJECTIVE_NAMES),
    ]
    # only those asked for
    some = tiny_client.post("/api/analyze", json={**BODY, "objectives": ["k1", "jsd"]}).json()
    page = tiny_client.get(f"/analyses/{some['id']}").text
    assert menu(page)[3:] == ["objectives.k1", "objectives.jsd"]
    # the script reads each value the menu names from the steps
    assert set(analysis["steps"][0]["objectives"]) >= set(OBJECTIVE_NAMES)


def test_upload_form_fields_set_the_objectives_like_the_body(tiny_client):
    options = {
        "objectives": ["k1", "jsd", "clipped_reverse_kl"],
        "objective_k": 7,
        "jsd_beta": 0.25,
        "clip_tau": 0.2,
    }
    direct = tiny_client.post("/api/analyze", json={**GOOD, **options}).json()
    form = {**options, "objectives": "k1, jsd,clipped_reverse_kl"}
    created = upload(tiny_client, json.dumps(GOOD), **form)
    assert created.status_code == 201, created.text
    job = wait_done(tiny_client, created.json()["job"]["id"])
    items = tiny_client.get(f"/api/jobs/{job['id']}/items").json()
    stored = tiny_client.get(f"/api/analyses/{items[0]['analysis_id']}").json()
    assert stored["objective_options"] == direct["objective_options"]
    assert stored["objective_options"]["objectives"] == options["objectives"]
    assert [s["objectives"] for s in stored["steps"]] == [s["objectives"] for s in direct["steps"]]
    # a line's own options win over the form's
    own = upload(tiny_client, json.dumps({**GOOD, "jsd_beta": 0.9}), jsd_beta="0.1")
    job = wait_done(tiny_client, own.json()["job"]["id"])
    item = tiny_client.get(f"/api/jobs/{job['id']}/items").json()[0]
    assert (
        tiny_client.get(f"/api/analyses/{item['analysis_id']}").json()["objective_options"]["jsd_beta"] == 0.9
    )


def test_upload_form_refuses_an_unknown_objective(tiny_client):
    r = upload(tiny_client, json.dumps(GOOD), objectives="k1,k9")
    assert r.status_code == 422, r.text
    assert "k9" in r.json()["error"] and "objectives" in r.text
    r = upload(tiny_client, json.dumps(GOOD), jsd_beta="2")
    assert r.status_code == 422 and "jsd_beta" in r.text, r.text


def test_the_upload_page_has_the_fields(tiny_client):
    page = tiny_client.get("/upload").text
    for name in ("objectives", "objective_k", "jsd_beta", "clip_tau"):
        assert f'name="{name}"' in page
