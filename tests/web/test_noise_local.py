"""On the local backend there is no server noise: analyses carry no `noise` and no per-step
`uncertain` or KL intervals, and `POST /api/models/noise` is refused (docs/metrics.md, "Noise
bounds"). The vLLM side is tests/vllm_backend/test_noise.py."""

from __future__ import annotations

from support import GOOD, assert_error


def test_local_analyses_carry_no_noise(tiny_client):
    r = tiny_client.post("/api/analyze", json=GOOD)
    assert r.status_code == 200, r.text
    analysis = r.json()
    assert "noise" not in analysis
    for step in analysis["steps"]:
        assert not {"uncertain", "reverse_kl_interval", "forward_kl_interval"} & step.keys()
    models = tiny_client.get("/api/models").json()
    assert "noise" not in models and models["backend"] == "local"
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    assert 'id="noise"' not in page and " unc" not in page


def test_measuring_noise_on_the_local_backend_is_refused(tiny_client):
    assert_error(tiny_client.post("/api/models/noise"), 400, "vllm backend only")
