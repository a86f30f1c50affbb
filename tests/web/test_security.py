"""Access and untrusted input, in process on the tiny model: the API token (header or login
cookie) on every route, the security headers and policies, a client that tries to reach the
models, settings or the file system, and model or user text in every page and export."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from support import tiny_settings
from vrollout.cli import commands as cli
from vrollout.config import Settings
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app
from vrollout.web.security import APP_CSP, SESSION_COOKIE, answered_hosts, local_path, session_value

TOKEN = "correct-horse-battery-staple"
XSS = '<img src=x onerror=alert(1)> "><script>alert(1)</script> </script><script>alert(2)</script> {{7*7}}'
GOOD = {"prompt": "hello", "response": "the hello world", "privileged": "hint"}
PROMPT = {"prompt": "hello", "privileged": "hint"}  # the pedagogical rollout takes no response
DATABASE_FILES = {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"}  # all a tiny app writes
ENDPOINTS = [
    ("/api/analyze", GOOD),
    ("/api/tasks", GOOD),
    ("/api/pedagogical", PROMPT),
    ("/api/pedagogical/tasks", PROMPT),
]


@pytest.fixture
def guarded(tiny, tmp_path):
    """An app that asks for TOKEN, with one stored analysis, one job and one task to address."""
    # Every route is tried with a wrong token below: far more guesses than the default allows.
    settings = tiny_settings(tmp_path, api_token=TOKEN, login_max_failures=10_000)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    auth = {"authorization": f"Bearer {TOKEN}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        analysis = client.post("/api/analyze", json=GOOD, headers=auth).json()
        files = {"file": ("runs.jsonl", json.dumps(GOOD).encode())}
        job = client.post("/api/jobs", files=files, headers=auth).json()["job"]
        task = client.post("/api/tasks", json=GOOD, headers=auth).json()
        client.ids = {"analysis_id": analysis["id"], "job_id": job["id"], "task_id": task["task_id"]}
        client.ids["page_name"] = "metrics.md"  # a page of the manual (/docs/{page_name})
        client.ids["line"] = 1  # a pedagogical job's rollout (/api/jobs/{job_id}/rollouts/{line})
        wait(lambda: client.get(f"/api/jobs/{job['id']}", headers=auth).json()["state"] == "done")
        wait(lambda: client.get(f"/api/tasks/{task['task_id']}", headers=auth).json()["state"] == "done")
        yield client


def wait(done, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not done():
        assert time.time() < deadline
        time.sleep(0.05)


def every_route(app) -> list[tuple[str, str]]:
    """(method, path template) of every route, the static files as one of their files."""
    found = []
    for route in app.routes:
        # FastAPI keeps included routers as one entry each: look inside.
        inner = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        for r in inner:
            if r.path == "/static":
                found.append(("GET", "/static/analysis.js"))
            for method in sorted(getattr(r, "methods", None) or ()):
                if method != "HEAD":
                    found.append((method, r.path))
    return found


def test_every_route_asks_for_the_token(guarded):
    routes = every_route(guarded.app)
    assert len(routes) > 25 and ("GET", "/api/jobs/{job_id}/events") in routes and ("GET", "/docs") in routes
    cookie = {SESSION_COOKIE: session_value(TOKEN)}
    for method, template in sorted(routes, key=lambda r: r[0] == "DELETE"):  # deletions last
        path = template.format(**guarded.ids)
        if path in ("/login", "/logout"):  # open: a login must always be able to end
            continue
        refused = guarded.request(method, path, follow_redirects=False)
        assert refused.status_code == 401, (method, path, refused.status_code)
        assert refused.json() == {"ok": False, "error": refused.json()["error"], "status": 401}
        assert "Bearer" in refused.json()["error"] and refused.headers["www-authenticate"] == "Bearer"
        page = guarded.request(method, path, headers={"accept": "text/html"}, follow_redirects=False)
        if method == "GET" and not path.startswith("/api/"):
            assert (page.status_code, page.headers["location"]) == (
                303,
                f"/login?next={path.replace('/', '%2F')}",
            )
        else:
            assert page.status_code == 401, (method, path)
        wrong = guarded.request(method, path, headers={"authorization": "Bearer nope", "x-api-token": "no"})
        assert wrong.status_code == 401, (method, path)
        for credentials in ({"authorization": f"Bearer {TOKEN}"}, {"x-api-token": TOKEN}, {"cookie": ""}):
            guarded.cookies = cookie if "cookie" in credentials else {}
            given = {k: v for k, v in credentials.items() if k != "cookie"}
            r = guarded.request(method, path, headers=given, follow_redirects=False)
            guarded.cookies = {}
            # A GET answers (a job's localization table, its pedagogical comparison and rollouts:
            # 422 where the job is not of that kind); a POST without its body is refused for the
            # body, not for access.
            kinds = ("/localization", "/comparison", "/rollouts")
            answered = (200, 422) if path.endswith(kinds) or "/rollouts/" in path else (200,)
            assert (r.status_code in answered) if method == "GET" else (r.status_code not in (401, 303)), (
                method, path, r.status_code, credentials.keys(),
            )  # fmt: skip


def test_event_stream_with_the_cookie(guarded):
    guarded.cookies = {SESSION_COOKIE: session_value(TOKEN)}
    with guarded.stream("GET", f"/api/jobs/{guarded.ids['job_id']}/events") as r:
        text = "".join(r.iter_text())
    assert r.status_code == 200 and "event: end" in text


def test_login_flow(guarded):
    form = guarded.get("/login?next=/analyses")
    assert form.status_code == 200 and 'name="token"' in form.text and 'value="/analyses"' in form.text
    wrong = guarded.post("/login", data={"token": "guess", "next": "/analyses"})
    assert wrong.status_code == 401 and "That is not this server&#39;s API token." in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    right = guarded.post("/login", data={"token": TOKEN, "next": "/analyses"}, follow_redirects=False)
    assert (right.status_code, right.headers["location"]) == (303, "/analyses")
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = guarded.get("/analyses", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 200 and guarded.ids["analysis_id"] in page.text


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.invalid/",
        "//evil.invalid/",
        "/\\evil.invalid",
        "/\t/evil.invalid",
        "\\\\evil.invalid",
        "javascript:alert(1)",
        "http:evil.invalid",
        "",
    ],
)
def test_login_never_redirects_elsewhere(guarded, target):
    assert local_path(target) == "/"
    r = guarded.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
    assert r.headers["location"] == "/"
    page = guarded.get("/login", params={"next": target})
    assert 'name="next" value="/"' in page.text


def test_login_keeps_a_local_target():
    assert local_path("/jobs/abc?x=1&y=2") == "/jobs/abc?x=1&y=2"


def test_without_a_token_everything_is_open(tiny_client):
    assert tiny_client.get("/api/health").status_code == 200
    assert (
        tiny_client.get("/jobs", headers={"accept": "text/html"}, follow_redirects=False).status_code == 200
    )
    login = tiny_client.post("/login", data={"token": "anything", "next": "/jobs"}, follow_redirects=False)
    assert login.status_code == 303 and SESSION_COOKIE not in login.cookies


def test_no_cross_site_writes(tiny_client):
    """A page on another site cannot post here, with or without a token (browsers name the site)."""
    files = {"file": ("runs.jsonl", json.dumps(GOOD).encode())}
    for site in ("cross-site", "same-site"):
        r = tiny_client.post("/api/jobs", files=files, headers={"sec-fetch-site": site})
        assert r.status_code == 403 and r.json()["status"] == 403
    assert tiny_client.get("/api/jobs", headers={"sec-fetch-site": "cross-site"}).status_code == 200
    for site in ("same-origin", "none"):
        assert tiny_client.post("/api/jobs", files=files, headers={"sec-fetch-site": site}).status_code == 201
    assert tiny_client.post("/api/jobs", files=files).status_code == 201  # not a browser


def test_empty_token_means_none(monkeypatch):
    monkeypatch.setenv("VROLLOUT_API_TOKEN", "")
    assert Settings().api_token is None
    monkeypatch.setenv("VROLLOUT_API_TOKEN", TOKEN)
    assert Settings().api_token == TOKEN and TOKEN not in repr(Settings())


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("127.0.0.2", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("my-box.example", None, True),
        ("0.0.0.0", TOKEN, False),
    ],
)
def test_exposure_warning(host, token, warned):
    warning = cli.exposure_warning(Settings(host=host, api_token=token))
    assert (warning is not None) == warned
    if warned:
        assert host in warning and "VROLLOUT_API_TOKEN" in warning


def test_serve_flags_reach_the_app(monkeypatch, capsys, tmp_path, tiny_folder):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setenv("VROLLOUT_STUDENT", str(tiny_folder))  # serve loads the models before uvicorn
    db = str(tmp_path / "db.sqlite3")
    assert cli.main(["serve", "--host", "0.0.0.0", "--api-token", TOKEN, "--database", db]) == 0
    assert started["host"] == "0.0.0.0" and "warning" not in capsys.readouterr().err
    with TestClient(started["app"]) as client:  # no lifespan needed to be refused
        assert client.get("/api/models").status_code == 401
    cli.main(["serve", "--host", "0.0.0.0", "--database", db])
    assert "without an API token" in capsys.readouterr().err


def test_serve_allowed_host_flag(monkeypatch, tmp_path, tiny_folder):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app))
    monkeypatch.setenv("VROLLOUT_STUDENT", str(tiny_folder))
    monkeypatch.delenv("VROLLOUT_ALLOWED_HOSTS")  # as a user's shell has it
    db = str(tmp_path / "db.sqlite3")
    assert cli.main(["serve", "--allowed-host", "Box.example", "--database", db]) == 0
    client = TestClient(started["app"])  # no lifespan needed: the Host is checked first
    assert client.get("/static/app.css", headers={"host": "box.example:8000"}).status_code == 200
    assert client.get("/static/app.css", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/static/app.css", headers={"host": "evil.example"}).status_code == 400


def sha256_source(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def test_security_headers_on_every_page(tiny_client):
    a = tiny_client.post("/api/analyze", json=GOOD).json()
    html = {"accept": "text/html"}
    for path in ("/", "/upload", "/jobs", "/analyses", f"/analyses/{a['id']}", "/analyses/nope", "/login"):
        r = tiny_client.get(path, headers=html)
        assert r.headers["content-type"].startswith("text/html"), path
        assert r.headers["content-security-policy"] == APP_CSP, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        inline = re.findall(r"<script(?![^>]*(?:src=|application/json))[^>]*>", r.text)
        assert inline == [], path  # the app's pages run only files from /static
    for path in ("/api/health", "/static/analysis.js"):
        assert tiny_client.get(path).headers["x-content-type-options"] == "nosniff"


def test_docs_come_from_this_server(tiny_client):
    """/docs: Swagger UI vendored under /static, under the app's own policy, nothing from elsewhere."""
    r = tiny_client.get("/docs")
    assert r.status_code == 200 and r.headers["content-security-policy"] == APP_CSP
    assert "//" not in r.text  # no URL of another site, not even scheme-relative
    assert re.findall(r"<script(?![^>]*src=)[^>]*>", r.text) == []  # no inline script
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert [a for a in assets if not a.startswith("/static/")] == ["data:,"]  # the empty favicon
    assert {"/static/vendor/swagger-ui-bundle-5.35.0.js", "/static/vendor/swagger-ui-5.35.0.css"} <= set(
        assets
    )
    for asset in assets[1:]:
        got = tiny_client.get(asset)
        assert got.status_code == 200 and len(got.content) > 300, asset
    assert 'data-openapi-url="/openapi.json"' in r.text
    assert "validatorUrl: null" in tiny_client.get("/static/docs.js").text  # no badge from elsewhere
    assert (Path(tiny_client.app.state.settings.static_dir) / "vendor/swagger-ui-5.35.0.LICENSE").is_file()
    assert tiny_client.get("/redoc").status_code == 404  # one manual


def success(operation: dict) -> tuple[str, dict]:
    return next((code, r) for code, r in operation["responses"].items() if code.startswith("2"))


def test_openapi_describes_every_response(tiny_client):
    """Each operation's success has a model (a named schema, or a list of one), or says which
    files it sends; every failure has the error shape."""
    schema = tiny_client.get("/openapi.json").json()
    named = set(schema["components"]["schemas"])
    operations = [(m, p, op) for p, item in schema["paths"].items() for m, op in item.items()]
    assert len(operations) >= 18
    for method, path, operation in operations:
        code, answer = success(operation)
        content = answer.get("content", {})
        assert content, (method, path)
        body = content.get("application/json", {}).get("schema")
        if body is not None:
            ref = (
                body.get("$ref")
                or body.get("items", {}).get("$ref")
                or body.get("additionalProperties", {}).get("$ref")
            )
            assert ref and ref.rsplit("/", 1)[1] in named, (method, path, body)
        else:
            assert set(content) & {"text/event-stream", "application/vnd.apache.parquet"}, (method, path)
        for status, failure in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert failure["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }
        if method == "post":
            assert "403" in operation["responses"], path  # cross-site writes
        assert "400" in operation["responses"], path  # the Host check


def test_openapi_declares_the_token(tiny_client, guarded):
    """The bearer scheme (and X-API-Token) for Swagger's Authorize button; required, with its
    401 and 429, only where the server asks for a token."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    open_schema = tiny_client.get("/openapi.json").json()
    guarded_schema = guarded.get("/openapi.json", headers=auth).json()
    for schema in (open_schema, guarded_schema):
        schemes = schema["components"]["securitySchemes"]
        assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
        assert (schemes["apiToken"]["in"], schemes["apiToken"]["name"]) == ("header", "X-API-Token")
    assert "security" not in open_schema
    assert guarded_schema["security"] == [{"bearer": []}, {"apiToken": []}]
    health = guarded_schema["paths"]["/api/health"]["get"]["responses"]
    assert {"401", "429"} <= set(health) and "401" not in open_schema["paths"]["/api/health"]["get"][
        "responses"
    ]
    assert guarded.get("/docs", headers=auth).status_code == 200


def test_download_policy_hashes_exactly_its_scripts(tiny_client):
    a = tiny_client.post("/api/analyze", json=GOOD).json()
    r = tiny_client.get(f"/analyses/{a['id']}/download")
    header = r.headers["content-security-policy"]
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', r.text).group(1)
    meta = meta.replace("&#39;", "'")
    assert header == f"{meta}; frame-ancestors 'none'" and "connect-src" not in meta
    scripts = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    static = Path(tiny_client.app.state.settings.static_dir)
    assert scripts[1:] == [(static / "common.js").read_text(), (static / "analysis.js").read_text()]
    allowed = re.search(r"script-src ([^;]*)", meta).group(1).split()
    assert sorted(allowed) == sorted(sha256_source(s) for s in scripts)


def test_requests_cannot_reach_models_settings_or_files(tiny_client, tmp_path):
    app = tiny_client.app
    analyzer, pair = app.state.analyzer, app.state.analyzer.pair
    student, teacher = pair.student, pair.teacher
    before = app.state.settings.model_dump()
    hostile = {
        "student": "gpt2",
        "teacher": "/etc",
        "model": "evil/model",
        "model_path": "/etc/passwd",
        "trust_remote_code": True,
        "cache_dir": str(tmp_path / "cache"),
        "database": str(tmp_path / "other.sqlite3"),
        "settings": {"api_token": None},
    }
    for key, value in hostile.items():
        for url, body in ENDPOINTS:
            r = tiny_client.post(url, json={**body, key: value})
            assert r.status_code == 422 and key in r.json()["error"], (url, key, r.text)
    # Upload: extra form fields are not parameters of the route; extra keys of a line are ignored.
    form = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in hostile.items()}
    line = json.dumps({**GOOD, **hostile})
    r = tiny_client.post("/api/jobs", files={"file": ("runs.jsonl", line.encode())}, data=form)
    assert r.status_code == 201, r.text
    wait(lambda: tiny_client.get(f"/api/jobs/{r.json()['job']['id']}").json()["state"] == "done")
    assert app.state.analyzer is analyzer and analyzer.pair is pair
    assert (pair.student, pair.teacher) == (student, teacher)
    assert app.state.settings.model_dump() == before
    assert {p.name for p in tmp_path.rglob("*")} <= DATABASE_FILES


@pytest.mark.parametrize(
    "filename",
    [
        "../../../tmp/pwned.jsonl",
        "..\\..\\..\\tmp\\pwned.jsonl",
        "/tmp/pwned.jsonl",
        "pwned\x00.jsonl/../../x",
        '<img src=x onerror=alert(1)>"pwned.jsonl',
    ],
)
def test_upload_names_never_become_paths(tiny_client, tmp_path, filename):
    pwned = Path("/tmp/pwned.jsonl")
    pwned.unlink(missing_ok=True)
    r = tiny_client.post("/api/jobs", files={"file": (filename, json.dumps(GOOD).encode())})
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert "/" not in job["name"] and "\\" not in job["name"] and "\x00" not in job["name"]
    assert "<" not in job["name"] and '"' not in job["name"]
    wait(lambda: tiny_client.get(f"/api/jobs/{job['id']}").json()["state"] == "done")
    assert not pwned.exists() and not Path("pwned.jsonl").exists()
    assert {p.name for p in tmp_path.rglob("*")} <= DATABASE_FILES
    for page in (f"/jobs/{job['id']}", "/jobs"):
        text = tiny_client.get(page).text
        assert "<img src=x" not in text and job["name"] in text


def assert_escaped(text: str, where: str) -> None:
    for raw in ("<img src=x", "<script>alert"):
        assert raw not in text, where


def test_user_text_is_escaped_in_job_pages_and_errors(tiny_client):
    lines = [
        json.dumps({**GOOD, "id": XSS, "response": XSS, "meta": {"note": XSS}}),
        '{"prompt": "' + XSS.replace('"', "'") + '"',  # bad JSON: the reason may echo the input
        json.dumps({"prompt": XSS, "response": XSS, "reference_answer": XSS, "privileged": 1}),
    ]
    r = tiny_client.post("/api/jobs", files={"file": (f"{XSS}.jsonl", "\n".join(lines).encode())})
    job = r.json()["job"]
    assert [x["line"] for x in r.json()["rejected"]] == [2, 3]
    wait(lambda: tiny_client.get(f"/api/jobs/{job['id']}").json()["state"] == "done")
    page = tiny_client.get(f"/jobs/{job['id']}").text
    assert_escaped(page, "job page")
    data = re.search(r'<script type="application/json" id="job-data">(.*?)</script>', page, re.S).group(1)
    assert "</script" not in data and json.loads(data)["id"] == job["id"]
    assert_escaped(tiny_client.get("/jobs").text, "jobs page")
    in_path = '<img src=x onerror=alert(1)>"{{7*7}}'  # no slash: the route must match
    missing = tiny_client.get(f"/analyses/{in_path}", headers={"accept": "text/html"})
    assert missing.status_code == 404 and "{{7*7}}" in missing.text
    assert_escaped(missing.text, "error page")
    unknown = tiny_client.get(f"/no/{XSS}", headers={"accept": "text/html"})
    assert unknown.status_code == 404
    assert_escaped(unknown.text, "unknown path")


def test_user_text_is_escaped_in_analysis_pages(tiny_client):
    body = {**GOOD, "prompt": XSS, "response": XSS, "privileged": XSS, "reference_answer": XSS, "id": XSS}
    a = tiny_client.post("/api/analyze", json={**body, "meta": {"x": XSS}}).json()
    for url in (f"/analyses/{a['id']}", f"/analyses/{a['id']}/download", "/analyses"):
        page = tiny_client.get(url).text
        assert_escaped(page, url)
        assert "{{7*7}}" in page, url  # shown as written, never evaluated
        for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S):
            assert "</" not in block and json.loads(block)


def test_cli_report_escapes_user_text(tiny_client, tmp_path):
    body = {**GOOD, "prompt": XSS, "response": XSS, "id": XSS}
    analysis = tiny_client.post("/api/analyze", json=body).json()
    analysis["job"] = {"id": None, "line": 1}
    pair = SimpleNamespace(student=SimpleNamespace(name=XSS), teacher=SimpleNamespace(name=XSS))
    settings = tiny_client.app.state.settings
    cli.write_dataset(tmp_path, XSS, [analysis], [(2, XSS)], SimpleNamespace(pair=pair), settings)
    report = (tmp_path / "report.html").read_text()
    assert_escaped(report, "report.html")
    assert report.count("{{7*7}}") >= 3
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', report).group(1)
    scripts = re.findall(r"<script>(.*?)</script>", report, re.S)
    assert len(scripts) == 3 and all(sha256_source(s) in csp.replace("&#39;", "'") for s in scripts)
    assert scripts[1] == (settings.static_dir / "common.js").read_text()


def host_app(tiny, tmp_path, **settings):
    """A server as `serve` makes it (no name allowed beyond its own, unless given)."""
    config = tiny_settings(tmp_path, **{"allowed_hosts": [], **settings})
    return create_app(config, analyzer=Analyzer(tiny, config))


@pytest.mark.parametrize("path", ["/api/health", "/api/analyses", "/", "/jobs", "/static/app.css", "/docs"])
def test_a_loopback_server_answers_only_its_own_names(tiny, tmp_path, path):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin
    with this server as far as the browser knows; its Host header gives it away."""
    with TestClient(host_app(tiny, tmp_path), base_url="http://127.0.0.1:8000") as client:
        for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"):
            assert client.get(path, headers={"host": host}).status_code == 200, (path, host)
        for host in (
            "evil.example",
            "evil.example:8000",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "[::2]",
        ):
            r = client.get(path, headers={"host": host, "accept": "text/html"})
            assert r.status_code == 400 and r.json()["status"] == 400, (path, host)
            assert "VROLLOUT_ALLOWED_HOSTS" in r.json()["error"] and r.headers["x-frame-options"] == "DENY"
        assert client.post("/api/analyze", json=GOOD, headers={"host": "evil.example"}).status_code == 400


def test_hosts_named_in_the_setting(tiny, tmp_path):
    app = host_app(tiny, tmp_path, host="192.168.1.5", allowed_hosts=["Box.example"])
    with TestClient(app, base_url="http://box.example:8000") as client:
        for host in ("box.example:8000", "BOX.EXAMPLE", "192.168.1.5:8000", "localhost"):
            assert client.get("/api/health", headers={"host": host}).status_code == 200, host
        assert client.get("/api/health", headers={"host": "evil.example"}).status_code == 400


@pytest.mark.parametrize(
    ("settings", "answered"),
    [
        ({"host": "0.0.0.0"}, None),  # deliberately public: every name may reach it
        ({"host": "::"}, None),
        ({"api_token": TOKEN}, None),  # a rebinding page cannot present the token
        ({"allowed_hosts": ["*"]}, None),
        ({"host": "::1", "allowed_hosts": ["a.example:80"]}, {"localhost", "127.0.0.1", "::1", "a.example"}),
    ],
)
def test_which_hosts_are_answered(settings, answered):
    config = Settings(**settings)
    hosts = answered_hosts(config.host, config.allowed_hosts, config.api_token)
    assert hosts == (None if answered is None else frozenset(answered))


def test_allowed_hosts_from_the_environment(monkeypatch):
    monkeypatch.setenv("VROLLOUT_ALLOWED_HOSTS", "a.example, B.example")
    assert Settings().allowed_hosts == ["a.example", "b.example"]
    monkeypatch.setenv("VROLLOUT_ALLOWED_HOSTS", '["c.example"]')
    assert Settings().allowed_hosts == ["c.example"]


def test_a_public_server_answers_any_host(tiny, tmp_path):
    with TestClient(host_app(tiny, tmp_path, host="0.0.0.0")) as client:
        assert client.get("/api/health", headers={"host": "my-box.example:8000"}).status_code == 200


def guessing(tiny, tmp_path, address="203.0.113.7", **settings):
    config = tiny_settings(tmp_path, api_token=TOKEN, login_max_failures=3, **settings)
    app = create_app(config, analyzer=Analyzer(tiny, config))
    return TestClient(app, client=(address, 40000), raise_server_exceptions=False)


def test_login_guesses_are_limited(tiny, tmp_path):
    with guessing(tiny, tmp_path) as client:
        for _ in range(3):
            assert client.post("/login", data={"token": "guess"}).status_code == 401
        for token in ("guess", TOKEN):  # past the limit, even the right token waits
            r = client.post("/login", data={"token": token}, follow_redirects=False)
            assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60
            assert "too many wrong API tokens" in r.text and SESSION_COOKIE not in r.cookies
        assert client.get("/api/health", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 429
        assert client.get("/api/health").status_code == 401  # no guess: the usual answer
        other = TestClient(client.app, client=("203.0.113.8", 40000))  # another address is not held
        assert other.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303


def test_header_guesses_count_too(tiny, tmp_path):
    with guessing(tiny, tmp_path) as client:
        assert client.post("/login", data={"token": "guess"}).status_code == 401
        for headers in ({"authorization": "Bearer guess"}, {"x-api-token": "guess"}):
            assert client.get("/api/health", headers=headers).status_code == 401
        r = client.get("/api/health", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 429 and r.json()["status"] == 429 and int(r.headers["retry-after"]) > 0
        assert "VROLLOUT_LOGIN_MAX_FAILURES" in r.json()["error"]


def test_guesses_are_forgotten_after_the_window(tiny, tmp_path):
    with guessing(tiny, tmp_path, login_window_s=0.5) as client:
        for _ in range(3):
            client.post("/login", data={"token": "guess"})
        assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 429
        time.sleep(0.6)
        assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303


def test_a_right_login_clears_the_count(tiny, tmp_path):
    with guessing(tiny, tmp_path) as client:
        for _ in range(2):
            client.post("/login", data={"token": "guess"})
        assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
        for _ in range(2):
            assert client.post("/login", data={"token": "guess"}).status_code == 401


def test_origin_is_checked_without_sec_fetch_site(tiny_client):
    """Browsers without Sec-Fetch-Site still send Origin on a cross-site POST."""
    files = {"file": ("runs.jsonl", json.dumps(GOOD).encode())}
    for origin in ("http://evil.example", "http://testserver.evil.example", "null", "http://localhost"):
        r = tiny_client.post("/api/jobs", files=files, headers={"origin": origin})
        assert r.status_code == 403 and r.json()["status"] == 403, origin
        assert tiny_client.post("/api/analyze", json=GOOD, headers={"origin": origin}).status_code == 403
    for origin in ("http://testserver", "https://TESTSERVER"):  # this host (a proxy may end TLS)
        assert tiny_client.post("/api/jobs", files=files, headers={"origin": origin}).status_code == 201
    assert tiny_client.get("/api/jobs", headers={"origin": "http://evil.example"}).status_code == 200
    assert tiny_client.post("/api/jobs", files=files).status_code == 201  # curl, notebooks
    # Sec-Fetch-Site, where sent, decides (browsers send both).
    same = {"origin": "http://testserver", "sec-fetch-site": "cross-site"}
    assert tiny_client.post("/api/jobs", files=files, headers=same).status_code == 403
