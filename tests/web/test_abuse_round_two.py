"""Issue #24, item 5 and the "Also" list: X-Forwarded-For is believed only from the proxies a
setting names (uvicorn believed it from loopback, so a local client picked a new address per
guess and never met the wrong-token limit, or locked someone else out); `/api/models` shows no
server paths without a token; a login expires (checked by the server) and can be ended."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from support import free_port, tiny_settings
from support.live import running
from vrollout.config import Settings
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app
from vrollout.web.routes.analyses import source_kind
from vrollout.web.security import SESSION_COOKIE, session_value
from vrollout.web.server import uvicorn_config, uvicorn_options

TOKEN = "correct-horse-battery-staple"
WEEK = 7 * 24 * 3600


@contextmanager
def served(app, settings: Settings) -> Iterator[str]:
    """The app on a real uvicorn, with the options `vrollout serve` gives it: its base URL."""
    port = free_port()
    with running(uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning")):
        yield f"http://127.0.0.1:{port}"


def guess(base: str, forwarded_for: str, token: str = "wrong") -> int:
    headers = {"authorization": f"Bearer {token}", "x-forwarded-for": forwarded_for}
    return httpx.get(f"{base}/api/models", headers=headers, timeout=30).status_code


def test_proxy_headers_are_off_unless_proxies_are_named():
    assert uvicorn_options(Settings())["proxy_headers"] is False
    named = uvicorn_options(Settings(forwarded_allow_ips="10.0.0.5, 10.1.0.0/16"))
    assert named["proxy_headers"] is True and named["forwarded_allow_ips"] == ["10.0.0.5", "10.1.0.0/16"]
    with pytest.raises(ValueError, match="'proxy.example' is not an address, a network"):
        Settings(forwarded_allow_ips="proxy.example")


@pytest.mark.slow
def test_a_new_forwarded_address_per_guess_still_meets_the_limit(tiny, tmp_path):
    settings = tiny_settings(tmp_path, api_token=TOKEN, login_max_failures=3)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    with served(app, settings) as base:
        codes = [guess(base, f"10.0.0.{i}") for i in range(6)]
        # All from 127.0.0.1, whatever the header says: the limit holds, and no address can be
        # locked out by naming it.
        assert codes == [401, 401, 401, 429, 429, 429], codes


@pytest.mark.slow
def test_behind_a_named_proxy_each_forwarded_client_is_counted_alone(tiny, tmp_path):
    settings = tiny_settings(tmp_path, api_token=TOKEN, login_max_failures=3, forwarded_allow_ips="127.0.0.1")
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    with served(app, settings) as base:
        assert [guess(base, "10.0.0.1") for _ in range(4)] == [401, 401, 401, 429]
        assert guess(base, "10.0.0.2", TOKEN) == 200  # another client behind the proxy
        assert guess(base, "10.0.0.1", TOKEN) == 429


def test_source_kinds():
    assert source_kind("/srv/models/secret-run/checkpoint-900") == "folder"
    assert source_kind("./checkpoints/run") == "folder"
    assert source_kind("/home/me/.cache/SmolLM2-135M-Instruct.Q8_0.gguf") == "gguf"
    assert source_kind("Qwen/Qwen3-0.6B") == "hub"
    assert source_kind("http://10.0.0.7:8001 http://10.0.0.8:8001") == "vllm"
    assert source_kind(None) is None


def client_of(tiny, tmp_path, **overrides):
    secret = str(tmp_path / "secret-models" / "student")
    pair = dataclasses.replace(
        tiny,
        student=dataclasses.replace(tiny.student, source=secret),
        teacher=dataclasses.replace(tiny.teacher, source=secret + ".gguf"),
    )
    settings = tiny_settings(tmp_path, **overrides)
    return TestClient(create_app(settings, analyzer=Analyzer(pair, settings)), raise_server_exceptions=False)


def test_models_show_no_server_paths_without_a_token(tiny, tmp_path):
    with client_of(tiny, tmp_path) as client:
        models = client.get("/api/models").json()
    assert "secret-models" not in str(models)
    assert (models["student"]["source"], models["teacher"]["source"]) == ("folder", "gguf")
    assert models["student"]["name"] == tiny.student.name and models["student"]["vocab_size"] > 0
    for key in ("device", "dtype"):
        assert models["student"][key] == tiny.describe()["student"][key]
    assert "shared_weights" in models and "{privileged}" in models["teacher_template"]
    with client_of(tiny, tmp_path, api_token=TOKEN) as client:
        models = client.get("/api/models", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert models["student"]["source"] == str(tmp_path / "secret-models" / "student")


@pytest.fixture
def guarded(tiny, tmp_path):
    with client_of(tiny, tmp_path, api_token=TOKEN, login_max_failures=3) as client:
        yield client


def test_a_login_cookie_carries_its_signed_time_and_expires(guarded):
    right = guarded.post("/login", data={"token": TOKEN, "next": "/analyses"}, follow_redirects=False)
    assert right.status_code == 303 and f"Max-Age={WEEK}" in right.headers["set-cookie"]
    issued, _, _ = right.cookies[SESSION_COOKIE].partition(".")
    assert abs(int(issued) - time.time()) < 60
    guarded.cookies = {}

    def with_cookie(value: str) -> httpx.Response:
        guarded.cookies = {SESSION_COOKIE: value}
        try:
            return guarded.get("/api/models", follow_redirects=False)
        finally:
            guarded.cookies = {}

    now = int(time.time())
    assert with_cookie(session_value(TOKEN, now - 3600)).status_code == 200
    # Older than the setting: refused, though the browser was told to keep it for a week, and
    # so is a cookie whose time was moved on (its HMAC no longer matches) or set in the future.
    assert with_cookie(session_value(TOKEN, now - WEEK - 5)).status_code == 401
    old = session_value(TOKEN, now - WEEK - 5)
    assert with_cookie(f"{now}.{old.partition('.')[2]}").status_code == 401
    assert with_cookie(session_value(TOKEN, now + 3600)).status_code == 401
    assert with_cookie(session_value("another token", now)).status_code == 401
    # The moved, future and other-token cookies counted as guesses (3): the limit is met. An
    # expired genuine cookie is not a guess: it only sends the browser back to the login page.
    assert with_cookie(session_value(TOKEN, now)).status_code == 429


def test_an_expired_login_is_not_a_guess(tiny, tmp_path):
    with client_of(tiny, tmp_path, api_token=TOKEN, login_max_failures=1, session_max_age_s=60) as client:
        expired = session_value(TOKEN, int(time.time()) - 120)
        for _ in range(3):
            client.cookies = {SESSION_COOKIE: expired}
            page = client.get("/analyses", headers={"accept": "text/html"}, follow_redirects=False)
            assert (page.status_code, page.headers["location"]) == (303, "/login?next=%2Fanalyses")
        client.cookies = {}
        assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303


def test_logout_ends_the_session_and_the_header_offers_it(guarded):
    guarded.post("/login", data={"token": TOKEN}, follow_redirects=False)
    page = guarded.get("/analyses")
    assert page.status_code == 200 and 'action="/logout"' in page.text and 'id="logout"' in page.text
    across = guarded.post("/logout", headers={"sec-fetch-site": "cross-site"}, follow_redirects=False)
    assert across.status_code == 403 and guarded.get("/analyses").status_code == 200
    out = guarded.post("/logout", headers={"sec-fetch-site": "same-origin"}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert SESSION_COOKIE in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    assert SESSION_COOKIE not in guarded.cookies
    page = guarded.get("/analyses", headers={"accept": "text/html"}, follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/login?next=%2Fanalyses")


def test_no_logout_control_without_a_token(tiny_client):
    page = tiny_client.get("/analyses")
    assert page.status_code == 200 and 'action="/logout"' not in page.text
