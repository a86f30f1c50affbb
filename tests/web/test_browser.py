"""Browser tests: headless Chromium (Debian's) against a real uvicorn on the real default model."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import REAL_CACHE, free_port
from vrollout.cli.commands import write_dataset
from vrollout.config import Settings

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

XSS_TOKENS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


class Server:
    """`vrollout serve` in a subprocess, as a user would run it."""

    def __init__(self, database: Path, token: str | None = None) -> None:
        self.database, self.token, self.port, self.proc = database, token, free_port(), None
        self.auth = {"authorization": f"Bearer {token}"} if token else {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, "VROLLOUT_DATABASE": str(self.database), "VROLLOUT_CACHE_DIR": str(REAL_CACHE)}
        env["VROLLOUT_API_TOKEN"] = self.token or ""  # empty: no token
        cmd = [sys.executable, "-m", "vrollout.cli", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.proc.poll() is None, "the server exited during start-up"
            try:
                req = urllib.request.Request(self.url + "/api/health", headers=self.auth)
                with urllib.request.urlopen(req, timeout=2) as r:
                    if json.load(r)["ok"]:
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("the server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        """As a crash would: no shutdown, no cleanup."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"content-type": "application/json", **self.auth}
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.load(r)

    def get(self, path: str) -> dict:
        return json.loads(self.get_bytes(path))

    def get_bytes(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers=self.auth)
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("browser") / "db.sqlite3").start()
    yield s
    s.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def visible(token: str) -> str:
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def test_analyze_from_the_browser(server, page, tmp_path):
    page.goto(server.url + "/")
    page.fill("#prompt", "What is 17*23?")
    page.fill("#privileged", "17*23 = 391")
    page.fill("#reference_answer", "391")
    page.check("#recovery")
    page.fill("#continuation_tokens", "8")  # the API's default is 0 (off), as the form shows it
    page.fill("#max_new_tokens", "24")
    page.screenshot(path=tmp_path / "index.png", full_page=True)
    page.click("#analyze")
    page.wait_for_url("**/analyses/*", timeout=120_000)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    analysis_id = page.url.rsplit("/", 1)[1]
    a = server.get(f"/api/analyses/{analysis_id}")
    assert a["response_text"].startswith("17*23 = 381")
    assert a["trajectory"]["reference_answer"] == "391"

    # The token strip and the aligned virtual rollout agree with the JSON API.
    students = page.locator("#strip .col .stu").all_text_contents()
    teachers = page.locator("#strip .col .tea").all_text_contents()
    assert students == [visible(s["token"]) for s in a["steps"]]
    assert teachers == [visible(s["teacher_top1"]) for s in a["steps"]]
    assert page.locator("#strip .col.div").count() == a["summary"]["divergences"] > 0
    assert page.text_content("#rollout-text") == a["virtual_rollout"]["text"]
    assert page.text_content("#response-text") == a["response_text"]
    assert page.text_content("[data-key=tokens]") == str(a["summary"]["tokens"])
    assert page.text_content("[data-key=divergences]") == str(a["summary"]["divergences"])
    # The chart: four traces, one point per token on the KL trace.
    lengths = page.evaluate("document.getElementById('chart').data.map(t => t.x.length)")
    assert lengths[0] == len(a["steps"]) and lengths[1] == a["summary"]["divergences"]
    # The recovery curve: one point per prefix tried, split into succeeds / fails.
    assert len(lengths) == 9 and lengths[4] + lengths[5] == len(a["recovery"]["points"])  # + Lorenz
    last = a["recovery"]["last_recoverable"]
    assert page.text_content("[data-key=last_recoverable]") == f"#{last}"

    # Hover a divergent token: the tooltip names it, the teacher's choice and the alternatives.
    first = a["summary"]["first_divergence"]
    page.hover(f"#strip .col[data-i='{first}']")
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    text = tip.text_content()
    step = a["steps"][first]
    assert f"#{first}" in text and "≠ teacher" in text and f"rank {step['teacher_rank']}" in text
    assert visible(step["teacher_topk"][0]["token"]) in text and "If the teacher took the wheel" in text
    page.screenshot(path=tmp_path / "analysis-hover.png", full_page=True)

    # Click selects the token and marks it in the chart; the colour switch repaints the strip.
    page.click(f"#strip .col[data-i='{first}']")
    assert page.get_attribute("body", "data-selected") == str(first)
    shape_x = page.evaluate("document.getElementById('chart').layout.shapes.at(-1).x0")
    assert shape_x == first
    before = page.eval_on_selector("#strip .col .stu", "e => e.style.backgroundColor")
    page.check("input[value=rank]")
    after = page.eval_on_selector("#strip .col .stu", "e => e.style.backgroundColor")
    assert before != after
    assert page.errors == []


def test_xss_trajectory_runs_nothing(server, page, tmp_path):
    body = {
        "prompt": XSS_TOKENS[0] + " " + XSS_TOKENS[1],
        "response": "Sure: " + XSS_TOKENS[0] + " and " + XSS_TOKENS[1],
        "privileged": XSS_TOKENS[1],
    }
    a = server.post("/api/analyze", body)
    dialogs, requests = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + f"/analyses/{a['id']}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    for col in range(0, len(a["steps"]), 3):
        page.hover(f"#strip .col[data-i='{col}']")
    page.click("#student-context summary")
    page.click("#teacher-context summary")
    page.goto(server.url + "/analyses")
    page.screenshot(path=tmp_path / "xss.png", full_page=True)
    assert dialogs == []
    assert not [u for u in requests if u.rstrip("/").endswith("/x")]
    page.goto(server.url + f"/analyses/{a['id']}")
    assert "<script>alert(1)</script>" in page.text_content("#response-text")
    assert page.errors == []


def test_bad_input_shows_a_clear_error(server, page):
    page.goto(server.url + "/")
    page.fill("#prompt", "hi")
    page.check("input[value=paste]")  # and leave the response empty
    page.click("#analyze")
    page.wait_for_selector("#error:not([hidden])")
    assert "the response is empty" in page.text_content("#error")
    assert page.is_enabled("#analyze")


def test_analysis_page_after_a_restart(server, page):
    a = server.post("/api/analyze", {"prompt": "Say hi.", "response": "Hi there!"})
    server.stop()
    server.start()
    page.goto(server.url + f"/analyses/{a['id']}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.text_content("#response-text") == a["response_text"]
    assert page.locator("#strip .col").count() == len(a["steps"])


def test_pedagogical_rollout_on_the_analysis_page(server, page, tmp_path):
    a = server.post(
        "/api/analyze",
        {
            "prompt": "What is 17*23?",
            "response": "17*23 = 381.",
            "privileged": "17*23 = 391",
            "reference_answer": "391",
        },
    )
    page.goto(server.url + f"/analyses/{a['id']}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.input_value("#ped-reference") == "391"
    page.click("#ped-run")
    page.wait_for_selector("body[data-pedagogical='1']", timeout=120_000)
    summary = page.text_content("#ped-summary")
    assert summary.startswith("1 teacher intervention in") and "reaches the reference answer" in summary
    chosen = page.locator("#ped-strip .col.div")
    assert chosen.count() == 1
    assert chosen.locator(".stu").text_content() == "9" and chosen.locator(".tea").text_content() == "8"
    page.hover("#ped-strip .col.div")
    assert "the student proposed 8" in page.text_content("#tooltip")
    sweep = page.evaluate("document.getElementById('ped-chart').data[0].y")
    assert sweep[0] == 0 and max(sweep) >= 1  # threshold 0.001: no intervention, the student stays wrong
    page.screenshot(path=tmp_path / "pedagogical.png", full_page=True)
    assert page.errors == []


def upload(server: Server, lines: list[dict]) -> dict:
    boundary = "vrolloutboundary"
    content = "\n".join(json.dumps(x) for x in lines)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="runs.jsonl"\r\n'
        f"Content-Type: application/json\r\n\r\n{content}\r\n--{boundary}--\r\n"
    ).encode()
    req = urllib.request.Request(
        server.url + "/api/jobs",
        body,
        {"content-type": f"multipart/form-data; boundary={boundary}", **server.auth},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def test_killed_mid_job_resumes_every_line_exactly_once(server):
    lines = [
        {"id": f"q{i}", "prompt": f"What is {i}+{i}?", "response": f"{i}+{i} = {2 * i}."} for i in range(40)
    ]
    job_id = upload(server, lines)["job"]["id"]
    deadline = time.time() + 120
    while server.get(f"/api/jobs/{job_id}")["done"] < 3:
        assert time.time() < deadline
        time.sleep(0.1)
    server.kill()
    server.start()
    deadline = time.time() + 300
    while (job := server.get(f"/api/jobs/{job_id}"))["state"] != "done":
        assert time.time() < deadline
        time.sleep(0.2)
    assert (job["done"], job["failed"]) == (40, 0)
    with sqlite3.connect(server.database) as db:
        stored = [json.loads(zlib.decompress(blob)) for (blob,) in db.execute("SELECT data FROM analyses")]
    lines_stored = sorted(a["job"]["line"] for a in stored if a.get("job", {}).get("id") == job_id)
    assert lines_stored == list(range(1, 41))  # nothing lost, nothing done twice


def test_upload_and_dataset_page(server, page, tmp_path):
    src = tmp_path / "runs.jsonl"
    good = [
        {"id": "right", "prompt": "What is 2+2?", "response": "2+2 = 4.", "reference_answer": "4"},
        {"id": "wrong", "prompt": "What is 17*23?", "response": "17*23 = 381.", "reference_answer": "391"},
    ]
    src.write_text("\n".join([json.dumps(good[0]), "{oops", json.dumps(good[1])]) + "\n")
    page.goto(server.url + "/upload")
    page.set_input_files("#file", str(src))
    page.fill("#privileged", "Check the arithmetic.")
    page.click("#upload")
    page.wait_for_selector("#rejected:not([hidden])")
    assert page.text_content("#rejected-rows").startswith("2invalid JSON")
    page.click("#job-link")
    page.wait_for_selector("body[data-job-state='done']", timeout=120_000)
    page.wait_for_selector("body[data-loaded='2']", timeout=30_000)
    rows = page.locator("#trajectories tbody tr")
    assert rows.count() == 2
    assert page.locator("#trajectories tbody tr td:nth-child(9)").all_text_contents() == ["correct", "wrong"]
    page.click("#trajectories th[data-key=reverse_kl_total]")
    page.click("#trajectories th[data-key=reverse_kl_total]")  # descending
    kls = [float(x) for x in page.locator("#trajectories tbody tr td:nth-child(7)").all_text_contents()]
    assert kls == sorted(kls, reverse=True)
    page.fill("#filter", "381")
    assert rows.count() == 1
    for name in ("signal", "position", "agreement", "first_divergence", "kl_top_5pct", "kl_gini"):
        assert page.evaluate(f"document.getElementById('fig-{name}').data.length") == 2  # correct, incorrect
    heads = page.locator("#headline-table thead th").all_text_contents()
    assert heads == ["Measure", "all (n=2)", "correct (n=1)", "incorrect (n=1)"]
    job_id = page.url.rsplit("/", 1)[-1]
    table = server.get(f"/api/jobs/{job_id}/headline")
    shown = page.locator("#headline-table tbody tr[data-measure=kl_gini] td").all_text_contents()
    gini = next(r for r in table["rows"] if r["measure"] == "kl_gini")["cells"]
    assert shown[0].startswith("Gini of reverse KL ?")  # the row's name and its definition's '?'
    assert shown[1:] == [gini[g]["text"] for g in ("all", "correct", "incorrect")]
    page.screenshot(path=tmp_path / "dataset.png", full_page=True)
    page.click("#trajectories tbody tr a")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.text_content("#response-text") == "17*23 = 381."
    assert page.errors == []


def status_of(server: Server, path: str) -> int:
    try:
        server.get_bytes(path)
        return 200
    except urllib.error.HTTPError as e:
        return e.code


def test_delete_from_the_analysis_and_job_pages(server, page):
    """Delete asks first (dismissed: nothing happens), then deletes and goes to the list."""
    answers = iter([False, True, True])
    page.on("dialog", lambda d: d.accept() if next(answers) else d.dismiss())
    a = server.post("/api/analyze", {"prompt": "Say hi.", "response": "Hi!"})
    page.goto(f"{server.url}/analyses/{a['id']}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.click("#delete")  # dismissed
    assert status_of(server, f"/api/analyses/{a['id']}") == 200
    page.click("#delete")
    page.wait_for_url(server.url + "/analyses")
    assert status_of(server, f"/api/analyses/{a['id']}") == 404
    job_id = upload(server, [{"prompt": "Say hi.", "response": "Hi!"}])["job"]["id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    page.wait_for_selector("body[data-job-state='done']", timeout=120_000)
    page.click("#delete")
    page.wait_for_url(server.url + "/jobs")
    assert status_of(server, f"/api/jobs/{job_id}") == 404
    assert page.errors == []


def test_a_job_page_refused_a_stream_polls_instead(browser, tmp_path, monkeypatch):
    """Past VROLLOUT_MAX_STREAMS_PER_JOB a page's EventSource gets a 429 (which browsers do not
    retry): the page follows the job by polling and still sees it finish."""
    monkeypatch.setenv("VROLLOUT_MAX_STREAMS_PER_JOB", "1")
    server = Server(tmp_path / "db.sqlite3").start()
    try:
        lines = [{"prompt": f"What is {i}+{i}?", "response": f"{i}+{i} = {2 * i}. " * 6} for i in range(16)]
        job_id = upload(server, lines)["job"]["id"]
        pages = [browser.new_context().new_page() for _ in range(2)]
        refused = []
        pages[1].on("response", lambda r: r.url.endswith("/events") and refused.append(r.status))
        for page in pages:
            page.goto(f"{server.url}/jobs/{job_id}")
        for page in pages:
            page.wait_for_selector("body[data-job-state='done']", timeout=180_000)
            page.wait_for_selector("body[data-loaded='16']", timeout=30_000)
        assert refused == [429]
        for page in pages:
            page.context.close()
    finally:
        server.stop()


# Access and untrusted text: a server that asks for a token, and payloads in every view.
TOKEN = "browser-test-token"
PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    '"><script>alert(2)</script>',
    "</script><script>alert(3)</script>",
    "javascript:alert(4)",
    "{{7*7}}",
    '<img src="http://evil.invalid/pixel.png">',
    "<link rel=stylesheet href=//evil.invalid/x.css>",
    '<svg onload=fetch("http://evil.invalid/")>',
    "<a href='javascript:alert(5)'>click</a>",
]
PAYLOAD = " ".join(PAYLOADS)
SHORT = "<img src=x onerror=alert(1)>{{7*7}}"  # for columns that shorten text
REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`));"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("guarded") / "db.sqlite3", token=TOKEN).start()
    yield s
    s.stop()


@pytest.fixture
def watched(page, guarded):
    """A page that records CSP violations, dialogs and requests that leave the app's origin."""
    page.violations, page.dialogs, page.foreign = [], [], []
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda m: "Content Security Policy" in m.text and page.violations.append(m.text))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))

    def on_request(r) -> None:
        local = r.url.startswith((guarded.url + "/", "data:", "blob:", "file://"))
        if not local or r.url.startswith(guarded.url + "/x"):  # /x: an injected <img src=x>
            page.foreign.append(r.url)

    page.on("request", on_request)
    yield page
    assert (page.violations, page.dialogs, page.foreign, page.errors) == ([], [], [], [])


def log_in(page, server: Server, next_path: str = "/") -> None:
    page.goto(server.url + next_path)
    page.wait_for_url("**/login?next=*")
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_load_state()


def test_login_through_the_form(guarded, watched, tmp_path):
    page = watched
    page.goto(guarded.url + "/analyses")
    assert page.url == guarded.url + "/login?next=%2Fanalyses"
    page.fill("#token", "a wrong guess")
    page.click("#login")
    assert page.text_content("#login-error") == "That is not this server's API token."
    page.screenshot(path=tmp_path / "login.png")
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(guarded.url + "/analyses")
    assert page.text_content("h1").startswith("Stored analyses")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
    # The cookie carries fetches and EventSource (which cannot send headers) alike.
    job_id = upload(guarded, [{"prompt": "Say hi.", "response": "Hi!"}])["job"]["id"]
    assert page.evaluate("fetch('/api/health').then(r => r.status)") == 200
    end = page.evaluate(
        """(url) => new Promise((resolve) => {
             const source = new EventSource(url);
             source.addEventListener("end", (e) => { source.close(); resolve(JSON.parse(e.data).state); });
             source.onerror = () => { source.close(); resolve("error"); };
           })""",
        f"/api/jobs/{job_id}/events",
    )
    assert end == "done"
    # A login link that points elsewhere lands on the app's own front page.
    page.goto(guarded.url + "/login?next=https://evil.invalid/")
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(guarded.url + "/")
    page.context.clear_cookies()
    page.goto(guarded.url + "/jobs")
    assert page.url.startswith(guarded.url + "/login")


def test_every_view_shows_payloads_as_text(guarded, watched, tmp_path):
    page = watched
    fields = {"prompt": PAYLOAD, "response": PAYLOAD, "privileged": PAYLOAD, "reference_answer": SHORT}
    a = guarded.post(
        "/api/analyze", {**fields, "id": PAYLOAD, "meta": {"x": PAYLOAD}, "continuation_tokens": 2}
    )
    log_in(page, guarded)
    assert page.url == guarded.url + "/"

    # Upload: the rejected lines and their reasons; the job page lists ids and filters by text.
    src = tmp_path / '"><img src=x onerror=alert(1)>.jsonl'
    lines = [
        json.dumps({"id": SHORT, "prompt": PAYLOAD, "response": PAYLOAD, "meta": {"x": PAYLOAD}}),
        '{"prompt": "' + PAYLOAD.replace('"', "'"),
        json.dumps({"id": PAYLOAD, "prompt": PAYLOAD, "response": ""}),
    ]
    src.write_text("\n".join(lines) + "\n")
    page.goto(guarded.url + "/upload")
    page.set_input_files("#file", str(src))
    with page.expect_response("**/api/jobs") as response:
        page.click("#upload")
    page.wait_for_selector("#rejected:not([hidden])")
    rejected = response.value.json()["rejected"]
    assert page.text_content("#rejected-rows") == "".join(f"{r['line']}{r['error']}" for r in rejected)
    assert [r["line"] for r in rejected] == [2, 3]
    page.click("#job-link")
    page.wait_for_selector("body[data-loaded='1']", timeout=120_000)
    assert page.text_content("#trajectories tbody td:nth-child(2)") == SHORT
    page.fill("#filter", SHORT)
    assert page.locator("#trajectories tbody tr").count() == 1
    assert "onerror" in page.text_content("h1")  # the file's name, for display only
    page.goto(guarded.url + "/jobs")
    assert "onerror" in page.text_content("#jobs")

    # The analysis: strip, tooltips, texts, contexts, chart.
    traces = len(guarded.get(f"/api/analyses/{a['id']}/figure")["data"])  # 4, and the Lorenz panel's
    page.goto(guarded.url + f"/analyses/{a['id']}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    for col in range(0, len(a["steps"]), 4):
        page.hover(f"#strip .col[data-i='{col}']")
    page.click("#strip .col[data-i='1']")
    page.click("#student-context summary")
    page.click("#teacher-context summary")
    assert page.text_content("#response-text") == a["response_text"] and PAYLOAD in a["response_text"]
    assert PAYLOAD in page.text_content("#student-context pre")
    assert PAYLOAD in page.text_content("#teacher-context pre")
    assert page.text_content("#reference-answer") == SHORT
    assert page.evaluate("document.getElementById('chart').data.length") == traces
    assert page.eval_on_selector("#strip .col .stu", "e => e.style.backgroundColor") != ""
    page.goto(guarded.url + "/analyses")
    assert "<img src=x onerror=alert(1)>" in page.text_content("#analyses")
    page.goto(guarded.url + "/analyses/" + SHORT)
    assert SHORT in page.text_content(".error")

    # The one-file download and the CLI's report, opened from disk as a user would.
    download = tmp_path / "analysis.html"
    download.write_bytes(guarded.get_bytes(f"/analyses/{a['id']}/download"))
    page.goto(download.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.text_content("#response-text") == a["response_text"]
    assert page.evaluate("document.getElementById('chart').data.length") == traces
    job_id = guarded.get("/api/jobs")[0]["id"]
    items = guarded.get(f"/api/jobs/{job_id}/items")
    analyses = [guarded.get(f"/api/analyses/{i['analysis_id']}") for i in items if i["analysis_id"]]
    pair = SimpleNamespace(student=SimpleNamespace(name=SHORT), teacher=SimpleNamespace(name=SHORT))
    write_dataset(tmp_path, src.name, analyses, [(3, PAYLOAD)], SimpleNamespace(pair=pair), Settings())
    page.goto((tmp_path / "report.html").as_uri())
    page.wait_for_function("document.getElementById('fig-signal').data !== undefined")
    assert PAYLOAD in page.text_content("body") and SHORT in page.text_content("#trajectories")
    page.screenshot(path=tmp_path / "report.png", full_page=True)


def test_api_docs_render_offline(guarded, watched, tmp_path):
    """/docs: Swagger UI from /static/vendor under the app's own policy. Every request that
    would leave the server is cut off (and `watched` fails on any); Authorize with the bearer
    token carries "Try it out" once the login cookie is gone."""
    page = watched
    page.route(lambda url: not url.startswith(guarded.url + "/"), lambda route: route.abort())
    log_in(page, guarded, "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary", timeout=30_000)
    assert page.locator(".swagger-ui .opblock").count() >= 18
    assert page.text_content(".swagger-ui .info .title").startswith("Virtual Rollout")
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    page.context.clear_cookies()
    page.click(".swagger-ui .btn.authorize")
    bearer = page.locator(".modal-ux .auth-container").first
    assert "bearer" in bearer.text_content()
    bearer.locator("input").fill(TOKEN)
    bearer.locator("button.authorize").click()
    page.click(".modal-ux button.btn-done")
    health = page.locator("[id^='operations-api-health']")
    health.locator(".opblock-summary").click()
    health.locator(".try-out__btn").click()
    health.locator(".execute").click()
    status = health.locator(".live-responses-table tbody .response-col_status")
    status.wait_for(timeout=30_000)
    assert status.text_content().strip() == "200"
