"""What every page shares (#28, "Everywhere" and "Definitions where the number is"): the manual
served by the app, a definition beside every number, gzip and cache lifetimes, one set of
defaults for `/`, Upload and the API, Cancel on `/`, an error shown once next to its field, and
the current page marked in the nav. In process on the tiny model; the browser tests at the end
(slow tier) drive headless Chromium against a real uvicorn."""

from __future__ import annotations

import gzip
import json
import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from support import REPO
from support.live import live_app
from vrollout.report.definitions import DEFINITIONS, define
from vrollout.report.headline import MEASURES, objective_measures, quadrant_measures
from vrollout.report.pages import PLOTLY_URL
from vrollout.web.defaults import form_defaults

GOOD = {"prompt": "hi", "response": "hello the world"}
SHOTS = Path("/tmp/shots")


class Tags(HTMLParser):
    """Every start tag of a page: (tag, attributes)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if a.get("id")}

    def find(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in wanted.items())]


def docs_pages() -> list[str]:
    return sorted(p.name for p in (REPO / "docs").glob("*.md"))


@pytest.fixture
def analysis(tiny_client):
    a = tiny_client.post("/api/analyze", json={**GOOD, "reference_answer": "world", "recovery": True})
    assert a.status_code == 200, a.text
    return a.json()


# ----- the manual -------------------------------------------------------------------------------


def test_every_page_of_the_manual_is_served_and_its_links_and_anchors_resolve(tiny_client):
    rendered = {}
    for name in docs_pages():
        r = tiny_client.get(f"/docs/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), name
        rendered[name] = r.text
    ids = {name: Tags(text).ids() for name, text in rendered.items()}
    broken = []
    for name, text in rendered.items():
        for link in Tags(text).find("a"):
            href = link.get("href") or ""
            target = re.fullmatch(r"([a-z0-9-]+\.md)?(?:#(.+))?", href)
            if not href or not target or href.startswith(("http", "/")):
                continue
            page, anchor = target.group(1) or name, target.group(2)
            if page not in rendered or (anchor and anchor not in ids[page]):
                broken.append(f"{name} -> {href}")
    assert broken == []
    # Anchors are mkdocs' (Python-Markdown's toc slugs): the pages' own links above use them.
    assert {"summary-fields", "preflight", "noise-bounds", "verdicts"} <= ids["metrics.md"]
    assert "the-teacher-context" in ids["formats.md"]
    # Raw HTML in a page is text, never markup; mkdocstrings' lines become the docstrings.
    api = rendered["python-api.md"]
    assert ":::" not in api and "vrollout.notebook.load(" in api


def test_the_manual_home_and_the_api_docs_stay_apart(tiny_client):
    home = tiny_client.get("/docs/")
    assert home.status_code == 200 and 'href="/docs/metrics.md"' in home.text
    swagger = tiny_client.get("/docs")
    assert swagger.status_code == 200 and "swagger-ui" in swagger.text
    assert tiny_client.get("/openapi.json").json()["info"]["title"] == "Virtual Rollout"
    for bad in ("nope.md", "..%2Fpyproject.toml", "hooks.py", "settings_page.py"):
        r = tiny_client.get(f"/docs/{bad}", headers={"accept": "application/json"})
        assert r.status_code == 404 and r.json()["ok"] is False, bad


def test_every_manual_page_the_app_cites_exists():
    cited = set()
    for folder, pattern in (("templates", "*.html"), ("static", "*.js"), ("app", "**/*.py")):
        for path in (REPO / folder).glob(pattern):
            cited |= set(re.findall(r"docs/([a-z0-9-]+\.md)", path.read_text()))
    assert cited and cited <= set(docs_pages())


# ----- definitions ------------------------------------------------------------------------------


def test_every_tile_of_the_analysis_page_has_its_definition(tiny_client, analysis):
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    summary = page[page.index('id="summary"') : page.index("</section>", page.index('id="summary"'))]
    tiles = re.findall(r"<div><span class=\"k\">(.*?)</span>(.*?)<span class=\"v\"", summary, re.S)
    assert len(tiles) >= 11  # recovery and top-k tiles included
    missing = [name for name, after in tiles if 'class="define"' not in after]
    assert missing == []
    keys = re.findall(r'data-define="([a-z_0-9]+)"', summary)
    for key in keys:
        d = define(key)
        assert d is not None and d.definition and d.unit and d.url in summary
    # each definition links to a heading of the served manual
    ids = {}
    for d in DEFINITIONS.values():
        ids.setdefault(d.page, Tags(tiny_client.get(f"/docs/{d.page}").text).ids())
        assert d.anchor in ids[d.page], (d.name, d.anchor)


def test_every_headline_row_has_a_definition(tiny_client):
    rows = [*MEASURES, *objective_measures(["k1", "k3", "jsd", "topk_reverse_kl"]), *quadrant_measures()]
    assert [m.key for m in rows if define(m.key) is None] == []
    objectives = Tags(tiny_client.get("/docs/objectives.md").text).ids()
    assert {define(m.key).anchor for m in rows if define(m.key).page == "objectives.md"} <= objectives
    # the scripts that build headline rows read the same definitions from the page
    page = tiny_client.get("/").text
    embedded = re.search(r'<script type="application/json" id="vr-definitions">(.*?)</script>', page).group(1)
    assert json.loads(embedded)["keys"]["kl_top_5pct"]["url"] == "/docs/metrics.md#signal-concentration"


# ----- gzip and cache lifetimes -----------------------------------------------------------------


def test_html_and_json_are_gzipped_and_small_answers_are_not(tiny_client, analysis):
    for path in ("/", f"/analyses/{analysis['id']}", f"/api/analyses/{analysis['id']}", "/openapi.json"):
        r = tiny_client.get(path, headers={"accept-encoding": "gzip"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip", path
        assert "accept-encoding" in r.headers["vary"].lower()
        assert int(r.headers["content-length"]) < len(r.content)  # httpx has unzipped it
    plain = tiny_client.get("/", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    small = tiny_client.get("/api/health", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers  # under a kilobyte: not worth it


def test_a_progress_stream_is_never_gzipped(tiny_client):
    files = {"file": ("runs.jsonl", json.dumps(GOOD).encode())}
    job = tiny_client.post("/api/jobs", files=files).json()["job"]
    url = f"/api/jobs/{job['id']}/events"
    with tiny_client.stream("GET", url, headers={"accept-encoding": "gzip"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in stream.headers
        assert any(line.startswith("event: ") for line in stream.iter_lines())


def test_versioned_vendor_assets_are_kept_a_year_and_pages_are_revalidated(tiny_client, analysis):
    assert re.search(r"\d+\.\d+\.\d+", PLOTLY_URL)  # the version is in the name: a new one is a new URL
    page = tiny_client.get(f"/analyses/{analysis['id']}")
    assert page.headers["cache-control"] == "no-cache"
    assert f'src="{PLOTLY_URL}"' in page.text
    plotly = tiny_client.get(PLOTLY_URL, headers={"accept-encoding": "gzip"})
    assert plotly.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plotly.headers["content-encoding"] == "gzip"
    swagger = tiny_client.get("/static/vendor/swagger-ui-5.35.0.css")
    assert swagger.headers["cache-control"] == "public, max-age=31536000, immutable"
    own = tiny_client.get("/static/common.js")
    assert own.headers["cache-control"] == "no-cache" and own.headers["etag"]
    again = tiny_client.get("/static/common.js", headers={"if-none-match": own.headers["etag"]})
    assert again.status_code == 304
    assert tiny_client.get(f"/api/analyses/{analysis['id']}").headers["cache-control"] == "no-cache"


def test_gzip_bytes_on_the_wire_are_a_gzip_stream(tiny_client):
    with tiny_client.stream("GET", "/", headers={"accept-encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert gzip.decompress(raw).decode().startswith("<!doctype html>")


# ----- one set of defaults ----------------------------------------------------------------------


def form_values(page: str) -> dict[str, str]:
    """Each input's value, or its placeholder where it has none (an empty field takes the default)."""
    found = {}
    for attrs in Tags(page).find("input"):
        if attrs.get("id") and attrs.get("type") == "number":
            found[attrs["id"]] = attrs.get("value") or attrs.get("placeholder")
    return found


def test_index_upload_and_the_api_start_from_the_same_defaults(tiny_client):
    index = form_values(tiny_client.get("/").text)
    upload = form_values(tiny_client.get("/upload").text)
    # What the API does with a request that sets nothing: the analysis records it.
    a = tiny_client.post("/api/analyze", json={"prompt": "hi"}).json()
    api = {"top_k": a["top_k"], "continuation_tokens": a["continuation_tokens"], **a["generation"]}
    for name in ("top_k", "continuation_tokens", "max_new_tokens", "temperature", "seed"):
        assert float(index[name]) == float(api[name]), name
    for name in ("top_k", "continuation_tokens", "temperature", "top_p", "seed"):
        assert float(upload[name]) == float(api[name]), name
    # Upload's pedagogical length and objective options: the API's too.
    settings = tiny_client.app.state.settings
    defaults = form_defaults(settings)
    assert int(upload["max_new_tokens"]) == defaults["pedagogical_max_new_tokens"]
    assert float(upload["threshold"]) == defaults["threshold"]
    assert (float(upload["objective_k"]), float(upload["jsd_beta"]), float(upload["clip_tau"])) == (
        defaults["objective_k"], defaults["jsd_beta"], defaults["clip_tau"],
    )  # fmt: skip
    job = tiny_client.post("/api/jobs", files={"file": ("a.jsonl", json.dumps(GOOD).encode())}).json()
    assert job["job"]["options"]["top_k"] in (None, api["top_k"])
    assert job["job"]["options"].get("continuation_tokens", 0) == api["continuation_tokens"]


# ----- the nav ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,current,section",
    [("/", "/", None), ("/upload", "/upload", None), ("/jobs", "/jobs", None),
     ("/analyses", "/analyses", None), ("/docs/metrics.md", None, "/docs/index.md")],
)  # fmt: skip
def test_the_nav_marks_the_current_page(tiny_client, path, current, section):
    tags = Tags(tiny_client.get(path).text)
    nav = [a for a in tags.find("a") if a.get("aria-current")]
    marked = {a["href"]: a["aria-current"] for a in nav}
    if current:
        assert marked.get(current) == "page"
    if section:
        assert marked.get(section) == "true"
    assert list(marked.values()).count("page") <= (2 if path.startswith("/docs/") else 1)


def test_an_api_error_names_its_field_for_the_form(tiny_client):
    r = tiny_client.post("/api/tasks", json={"prompt": "hi", "top_k": 9999, "continuation_tokens": -1})
    body = r.json()
    assert r.status_code == 422 and [d["field"] for d in body["details"]] == ["top_k", "continuation_tokens"]
    r = tiny_client.post("/api/analyze", json={**GOOD, "recovery": True})
    assert r.status_code == 422 and r.json()["field"] == "reference_answer"


def test_a_wrong_token_is_marked_on_its_field(tiny, tmp_path):
    from fastapi.testclient import TestClient
    from support import tiny_settings
    from vrollout.pipeline.analyzer import Analyzer
    from vrollout.web.app import create_app

    settings = tiny_settings(tmp_path, api_token="everywhere-token")
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        wrong = client.post("/login", data={"token": "guess", "next": "/"})
        (field,) = Tags(wrong.text).find("input", id="token")
        assert field["aria-invalid"] == "true" and field["aria-describedby"] == "login-error"
        assert wrong.text.count("not this server") == 1
        (fresh,) = Tags(client.get("/login").text).find("input", id="token")
        assert "aria-invalid" not in fresh


# ----- in the browser (slow tier) ---------------------------------------------------------------


def occupy(worker) -> threading.Event:
    """Hold the model worker until the returned event is set: a task sent now waits in the queue."""
    release, started = threading.Event(), threading.Event()

    def hold(progress: object) -> None:
        started.set()
        release.wait(60)

    worker.submit(hold)
    assert started.wait(10)
    return release


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    with live_app(tiny, tmp_path_factory.mktemp("everywhere")) as (app, port):
        yield app, f"http://127.0.0.1:{port}"


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()


def shoot(page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1400, 800):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=SHOTS / f"{name}-{width}.png", full_page=full_page)
    page.set_viewport_size({"width": 1400, "height": 900})


def test_cancel_on_the_analyze_page_stops_the_task(served, page):
    app, url = served
    page.goto(url + "/")
    shoot(page, "index")
    page.fill("#prompt", "What is 17*23?")
    release = occupy(app.state.worker)
    try:
        page.click("#analyze")
        page.wait_for_selector("#cancel:visible")
        page.click("#cancel")
        page.wait_for_selector("#status:visible")
        assert "Cancelled" in page.text_content("#status")
        assert page.is_enabled("#analyze") and page.is_hidden("#cancel") and page.is_hidden("#error")
        assert app.state.worker.describe()["queued"] == 0
    finally:
        release.set()
    assert httpx.get(url + "/api/analyses").json()["total"] == 0
    assert page.errors == []


def test_an_error_shows_once_next_to_the_field_it_names(served, page):
    _, url = served
    page.goto(url + "/")
    page.fill("#prompt", "What is 17*23?")
    page.check("#recovery")  # recovery needs a reference answer: the API names that field
    page.click("#analyze")
    note = page.wait_for_selector("#reference_answer-error")
    message = note.text_content()
    assert "reference_answer" in message
    assert page.get_attribute("#reference_answer", "aria-invalid") == "true"
    assert "reference_answer-error" in page.get_attribute("#reference_answer", "aria-describedby")
    assert page.is_hidden("#error")  # not a second time in the box above
    assert page.inner_text("main").count(message) == 1
    assert page.evaluate("document.activeElement.id") == "reference_answer"
    shoot(page, "index-error")
    page.fill("#reference_answer", "391")
    page.uncheck("#recovery")
    page.fill("#top_k", "9999")  # past the input's max: the browser's own check, no request
    page.evaluate("document.getElementById('analyze-form').noValidate = true")
    page.click("#analyze")
    page.wait_for_selector("#top_k-error")
    assert page.query_selector("#reference_answer-error") is None  # the old error is gone
    assert page.inner_text("main").count("top_k must be at most") == 1
    assert page.errors == [] or all("422" in e for e in page.errors)


def test_upload_shows_the_same_defaults_and_marks_its_field(served, page):
    _, url = served
    page.goto(url + "/upload")
    assert page.get_attribute('nav a[href="/upload"]', "aria-current") == "page"
    assert page.input_value("#continuation_tokens") == "0" and page.input_value("#top_k") == "5"
    shoot(page, "upload")
    page.set_input_files("#file", files=[{"name": "a.jsonl", "mimeType": "application/json",
                                          "buffer": json.dumps(GOOD).encode()}])  # fmt: skip
    page.fill("#map", "bad")  # not field=column: the API names the field
    page.click("#upload")
    note = page.wait_for_selector("#map-error")
    assert page.is_hidden("#error") and page.get_attribute("#map", "aria-invalid") == "true"
    assert page.inner_text("main").count(note.text_content()) == 1


def test_a_question_mark_opens_the_definition_and_links_to_the_manual(served, page):
    _, url = served
    body = {**GOOD, "reference_answer": "world", "recovery": True}
    a = httpx.post(url + "/api/analyze", json=body, timeout=300).json()
    page.goto(f"{url}/analyses/{a['id']}")
    assert page.get_attribute('nav a[href="/analyses"]', "aria-current") == "true"
    tile = page.locator('details.define[data-define="reverse_kl_total"]')
    pop = tile.locator(".define-pop")
    assert not pop.is_visible()
    tile.locator("summary").focus()
    page.keyboard.press("Enter")  # the keyboard opens it, as a click does
    assert pop.is_visible() and "nats" in pop.inner_text()
    assert page.get_attribute('details.define[data-define="reverse_kl_total"] summary', "aria-label") == (
        "What is reverse KL total?"
    )
    shoot(page, "analysis-definition")
    other = page.locator('details.define[data-define="tokens"] summary')
    other.click()
    assert not pop.is_visible()  # one open at a time
    page.keyboard.press("Escape")
    assert page.locator("details.define[open]").count() == 0
    tile.locator("summary").click()
    with page.expect_navigation():
        pop.locator("a").click()
    assert page.url.endswith("/docs/metrics.md#summary-fields")
    assert page.locator("#summary-fields").is_visible()
    assert page.get_attribute('.manual-contents a[href="/docs/metrics.md"]', "aria-current") == "page"
    shoot(page, "manual", full_page=False)  # the page is long: its first screen
    assert page.errors == []


def test_a_job_headline_row_carries_its_definition(served, page):
    _, url = served
    lines = "\n".join(json.dumps({**GOOD, "response": f"hello the world {i}"}) for i in range(3))
    job = httpx.post(url + "/api/jobs", files={"file": ("a.jsonl", lines.encode())}, timeout=60).json()["job"]
    page.goto(f"{url}/jobs/{job['id']}")
    assert page.get_attribute('nav a[href="/jobs"]', "aria-current") == "true"
    # the tiny pair shares its weights: no KL, but an agreement rate on every line
    row = page.wait_for_selector(
        '#headline-table tr[data-measure="agreement_rate"] details.define', timeout=120_000
    )
    row.query_selector("summary").click()
    text = row.query_selector(".define-pop").inner_text()
    assert "share of tokens" in text and "In the docs" in text
    assert row.query_selector("a").get_attribute("href") == "/docs/metrics.md#summary-fields"
    assert page.errors == []


def test_the_pages_citations_of_the_manual_are_links_to_their_section(served, page):
    _, url = served
    a = httpx.post(url + "/api/analyze", json=GOOD, timeout=300).json()
    page.goto(f"{url}/analyses/{a['id']}")
    # the chart's text alternative, from its figure (VR.plot)
    page.wait_for_selector("#chart[role=img]")
    label = page.get_attribute("#chart", "aria-label")
    assert label.startswith("Chart:") and "series:" in label and "reverse KL" in label
    cited = page.locator('#teacher-context-kind a[href^="/docs/formats.md"]')
    assert cited.inner_text() == 'docs/formats.md "Teacher context"'
    hrefs = page.eval_on_selector_all(
        'main a[href^="/docs/"]', "links => links.map(l => l.getAttribute('href'))"
    )
    for href in set(hrefs):
        assert httpx.get(url + href.split("#")[0]).status_code == 200, href
    with page.expect_navigation():
        cited.click()
    # the citation names the section loosely; the manual page finds its heading
    page.wait_for_function("location.hash === '#the-teacher-context'")
    assert page.locator("#the-teacher-context").is_visible()
    assert page.get_attribute("#the-teacher-context", "class") == "found"
    assert page.errors == []
