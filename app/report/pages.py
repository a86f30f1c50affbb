"""The HTML of reports: the templates' Jinja environment and what a one-file page inlines.

The web app renders its pages through this environment (wrapped in Starlette's templates), and
the standalone reports (`vrollout analyze --report`, `vrollout localize`, `vrollout
pedagogical`) render the same templates here, with no web framework. Knows nothing about HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path
from typing import Any

import jinja2
from vrollout.metrics.signal import headline
from vrollout.report.definitions import define, definitions_json

# plotly.js "basic" (scatter, bar, pie), vendored: it must match the plotly.js major version
# that the Python plotly package writes figures for (tests/web/test_pages.py checks).
PLOTLY_BUNDLE = "vendor/plotly-basic-4.1.1.min.js"
PLOTLY_URL = f"/static/{PLOTLY_BUNDLE}"


def show_token(token: str) -> str:
    """Whitespace made visible for the token strip (the template escapes the result)."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def template_env(folder: Path) -> jinja2.Environment:
    """The templates in `folder`, autoescaped (ids and model text are untrusted), with the
    pages' filters and globals."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True)
    env.filters["show_token"] = show_token
    env.filters["bits"] = lambda nats: None if nats is None else nats / math.log(2)
    env.globals["plotly_url"] = PLOTLY_URL
    env.globals["headline"] = headline  # the analysis page's one-line answer (metrics/signal.py)
    env.globals["definition"] = define  # the "?" beside a number (templates/_define.html)
    env.globals["definitions_json"] = definitions_json
    return env


def script_hashes(*scripts: str) -> str:
    """CSP sources that allow exactly these inline scripts (the text between the tags)."""
    digests = (hashlib.sha256(s.encode()).digest() for s in scripts)
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)


def standalone_csp(*scripts: str) -> str:
    """A one-file page that opens offline (download, report): its own inline scripts run, nothing
    is fetched. Fit for a <meta> element too (which ignores frame-ancestors, so it has none)."""
    return (
        f"default-src 'none'; script-src {script_hashes(*scripts)}; style-src 'unsafe-inline'; "
        "img-src data: blob:; object-src 'none'; base-uri 'none'; form-action 'none'"
    )


def standalone_assets(static: Path, script: str) -> tuple[dict[str, Any], str]:
    """What a one-file page inlines (the CSS; plotly.js, common.js and the page's `script`, in
    the order base.html runs them) and the policy that allows exactly those scripts (the file
    carries it in a <meta> element: the header is gone once it is saved)."""
    scripts = [(static / name).read_text() for name in (PLOTLY_BUNDLE, "common.js", script)]
    inline = {"inline_css": (static / "app.css").read_text(), "inline_scripts": scripts}
    return inline, standalone_csp(*scripts)
