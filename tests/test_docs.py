"""docs/ stays true as the code grows: every route the app registers is in docs/api.md, every
field an analysis (or a pedagogical rollout) emits is in docs/metrics.md, and the site builds with
`mkdocs build --strict` (a broken link or anchor, or a stale settings page, fails it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from support import REPO
from vrollout.schema.analysis import Analysis, field_names

DOCS = REPO / "docs"


def registered_routes(app: Any) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, and ("MOUNT", path) of mounted apps such as /static.
    Newer FastAPI keeps included routers whole in `app.routes`; `iter_route_contexts` opens them."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: the routes are flat already
        routes = list(app.routes)
    else:
        routes = list(iter_route_contexts(app.routes))
    for route in routes:
        methods = getattr(route, "methods", None)
        if methods is None:
            yield "MOUNT", route.path
            continue
        for method in sorted(methods - {"HEAD"}):
            yield method, route.path


def mentions_route(text: str, method: str, path: str) -> bool:
    if method == "MOUNT":
        return f"{path}/" in text
    # "GET /api/jobs" must not count as documented because "GET /api/jobs/{job_id}" is.
    return re.search(re.escape(f"{method} {path}") + r"(?![\w/{])", text) is not None


def documented(text: str, name: str) -> bool:
    """A field counts as documented where the text names it as code or as a JSON key: alone, as
    the last part of a path (`alignment.spans`) or with its value (`privileged_source: "..."`)."""
    return re.search(rf"[`\".]{re.escape(name)}[`\":]", text) is not None


def undocumented(text: str, names: Any) -> list[str]:
    return sorted(n for n in names if not documented(text, n))


def test_every_route_is_in_api_docs(tiny_client):
    text = (DOCS / "api.md").read_text()
    routes = set(registered_routes(tiny_client.app))
    assert ("POST", "/api/analyze") in routes and ("GET", "/analyses/{analysis_id}") in routes
    assert ("MOUNT", "/static") in routes
    missing = sorted(f"{m} {p}" for m, p in routes if not mentions_route(text, m, p))
    assert not missing, f"routes missing from docs/api.md: {missing}"


def test_route_matching_is_exact():
    text = "### GET /api/jobs/{job_id}\n`POST /api/jobs/{job_id}/cancel`"
    assert mentions_route(text, "GET", "/api/jobs/{job_id}")
    assert not mentions_route(text, "GET", "/api/jobs")
    assert not mentions_route(text, "POST", "/api/jobs")
    assert documented("| `agree` |", "agree") and not documented("agreement", "agree")
    assert documented("`alignment.spans`", "spans") and documented('`source: "x"`', "source")
    assert not documented("`agreement_rate`", "agree") and not documented("`disagree`", "agree")


def test_every_analysis_field_is_in_metrics_docs(tiny_client):
    body = {
        "prompt": "What is 2+2?",
        "response": "2+2 = 5.",
        "privileged": "2+2 = 4",
        "reference_answer": "4",
        "recovery": True,
        "continuation_tokens": 2,
        "top_k": 2,
    }
    resp = tiny_client.post("/api/analyze", json=body)
    assert resp.status_code == 200, resp.text
    a = resp.json()
    text = (DOCS / "metrics.md").read_text()
    step = a["steps"][0]
    assert "last_recoverable" in a["summary"]  # recovery's summary fields are emitted, so checked
    fields = {
        "analysis": a,
        "summary": a["summary"],
        "concentration": a["summary"]["concentration"],
        "step": step,
        "top-k entry": step["teacher_topk"][0],
        "continuation": step["teacher_continuation"],
        "student": a["student"],
        "teacher": a["teacher"],
        "trajectory": a["trajectory"],
        "virtual_rollout": a["virtual_rollout"],
        "recovery": a["recovery"],
        "recovery point": a["recovery"]["points"][0],
    }
    missing = {where: names for where, obj in fields.items() if (names := undocumented(text, obj))}
    assert not missing, f"fields missing from docs/metrics.md: {missing}"


def test_every_field_of_the_analysis_type_is_in_metrics_docs():
    """Every field the typed analysis declares (schema.analysis), also those the tiny run above
    cannot emit: a vLLM server's, a teacher with another tokenizer's, a job's."""
    text = (DOCS / "metrics.md").read_text()
    missing = sorted(f"{where}.{name}" for where, name in field_names(Analysis) if not documented(text, name))
    assert not missing, f"fields missing from docs/metrics.md: {missing}"


def test_every_pedagogical_field_is_in_metrics_docs(tiny_client):
    body = {
        "prompt": "What is 2+2?",
        "privileged": "2+2 = 4",
        "reference_answer": "4",
        "threshold": 0.99,  # the tiny random teacher is never that sure: it steps in
        "sweep": [0.5],
        "generation": {"max_new_tokens": 4},
    }
    resp = tiny_client.post("/api/pedagogical", json=body)
    assert resp.status_code == 200, resp.text
    r = resp.json()
    assert r["interventions"], "the test needs an intervention to check its fields"
    text = (DOCS / "metrics.md").read_text()
    fields = {
        "rollout": r,
        "policy": r["policy"],
        "token": r["tokens"][0],
        "intervention": r["interventions"][0],
        "sweep row": r["sweep"][0],
    }
    missing = {where: names for where, obj in fields.items() if (names := undocumented(text, obj))}
    assert not missing, f"fields missing from docs/metrics.md: {missing}"


def test_the_site_builds_strict(tmp_path):
    """What `make docs` runs: offline, every link and anchor resolved, the Python API rendered
    from its docstrings."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    api = (tmp_path / "python-api" / "index.html").read_text()
    for name in ("vrollout.notebook.load", "vrollout.notebook.Analysis", "VirtualRolloutCallback"):
        assert f'id="{name}' in api or f'id="vrollout.integrations.trl.{name}' in api, name
    # Nothing from a CDN or Google Fonts: the site opens offline.
    assert "fonts.googleapis" not in (tmp_path / "index.html").read_text()


def test_the_readme_is_a_front_door():
    """At most about 250 lines, linking into docs/ (every link resolves), never to DESIGN.md."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert any(link.startswith("docs/") for link in local)
    assert not [link for link in local if not (REPO / link).exists()]
    assert "DESIGN.md" not in text and not any("DESIGN.md" in p.read_text() for p in DOCS.glob("*.md"))
