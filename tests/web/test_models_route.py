"""GET /api/models on the vLLM backend: without a token, no replica's address (#24, Also)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from support import tiny_settings
from support.vllm import offline_vllm_backend
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app


def models(tiny, tmp_path, **settings) -> dict:
    config = tiny_settings(tmp_path, **settings)
    backend = offline_vllm_backend(tiny)
    try:
        app = create_app(config, analyzer=Analyzer(backend.pair, config, backend=backend))
        with TestClient(app, raise_server_exceptions=False) as client:
            headers = {"authorization": f"Bearer {config.api_token}"} if config.api_token else {}
            r = client.get("/api/models", headers=headers)
            assert r.status_code == 200, r.text
            return r.json()
    finally:
        backend.close()


def test_replica_addresses_only_with_a_token(tiny, tmp_path):
    hidden = models(tiny, tmp_path / "open")
    assert hidden["replicas"] and all(r["url"] is None for r in hidden["replicas"])
    assert "127.0.0.1" not in str(hidden)
    shown = models(tiny, tmp_path / "token", api_token="correct-horse-battery-staple")
    assert {r["url"] for r in shown["replicas"]} == {"http://127.0.0.1:9", "http://127.0.0.1:10"}
