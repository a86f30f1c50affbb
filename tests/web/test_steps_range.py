"""GET /api/analyses/{id}/steps: a stored analysis's steps by range, as the analysis page fetches
them while its reader scrolls (#25)."""

from __future__ import annotations

from support import assert_error
from support.synthetic import synthetic_analysis


def stored(client, tokens: int) -> dict:
    analysis = synthetic_analysis(tokens, top_k=3)
    client.app.state.store.save(analysis)
    return analysis


def test_a_range_is_the_steps_of_the_analysis(tiny_client):
    a = stored(tiny_client, 450)
    body = tiny_client.get(f"/api/analyses/{a['id']}/steps", params={"start": 190, "stop": 230}).json()
    assert (body["start"], body["stop"], body["total"]) == (190, 230, 450)
    assert body["steps"] == a["steps"][190:230]
    # stop defaults to one block (200 steps) and is cut at the total
    body = tiny_client.get(f"/api/analyses/{a['id']}/steps", params={"start": 400}).json()
    assert (body["start"], body["stop"], len(body["steps"])) == (400, 450, 50)
    assert tiny_client.get(f"/api/analyses/{a['id']}/steps", params={"start": 450}).json()["steps"] == []


def test_bad_ranges_are_a_clear_422(tiny_client):
    a = stored(tiny_client, 50)
    url = f"/api/analyses/{a['id']}/steps"
    assert_error(
        tiny_client.get(url, params={"start": 30, "stop": 10}), 422, "stop (10) is before start (30)"
    )
    assert_error(tiny_client.get(url, params={"start": 51}), 422, "past the last step", "50 steps")
    assert_error(tiny_client.get(url, params={"start": 0, "stop": 5000}), 422, "at most 2000 steps")
    assert_error(tiny_client.get(url, params={"start": -1}), 422)
    assert_error(tiny_client.get(url, params={"start": "x"}), 422)
    assert_error(tiny_client.get("/api/analyses/nope/steps"), 404, "no stored analysis")


def test_a_deleted_analysis_is_not_served_from_memory(tiny_client):
    """The route keeps the last analyses it parsed; a deleted one is gone all the same."""
    a = stored(tiny_client, 20)
    assert tiny_client.get(f"/api/analyses/{a['id']}/steps").status_code == 200
    assert tiny_client.get(f"/analyses/{a['id']}").status_code == 200  # its page, kept built too
    assert tiny_client.delete(f"/api/analyses/{a['id']}").status_code == 200
    assert_error(tiny_client.get(f"/api/analyses/{a['id']}/steps"), 404, "no stored analysis")
    assert tiny_client.get(f"/analyses/{a['id']}", headers={"accept": "text/html"}).status_code == 404


def test_the_range_is_in_the_openapi_schema(tiny_client):
    schema = tiny_client.get("/openapi.json").json()
    route = schema["paths"]["/api/analyses/{analysis_id}/steps"]["get"]
    ok = route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/StepsRange")
    assert set(schema["components"]["schemas"]["StepsRange"]["required"]) == {
        "start",
        "stop",
        "total",
        "steps",
    }
