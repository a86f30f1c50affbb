"""The manual, docs/*.md, served by the app itself at /docs/PAGE.md, so that the pages' links to
docs/metrics.md work offline on any install (the wheel ships docs/ as `vrollout.docs`).

Rendered on the server with markdown-it-py, raw HTML off (the text is escaped, links with a
script scheme are dropped). Not `mkdocs build` output: that needs mkdocs-material and
mkdocstrings, which only the test extra installs, and a build step at install time. The pages'
relative links (`formats.md#the-teacher-context`) resolve under /docs/ as they do on the mkdocs
site, and headings get the ids mkdocs gives them (Python-Markdown's toc slugify), so an anchor
works on both. A mkdocstrings line (`::: vrollout.notebook.load`) becomes that object's
signature and docstring, read from its source file (nothing is imported).

/docs itself stays the API's manual (Swagger UI, web/docs.py).
"""

from __future__ import annotations

import ast
import html
import importlib.util
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from vrollout.config import package_folder

router = APIRouter(include_in_schema=False)
PAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\.md")
AUTODOC = re.compile(r"^::: ?([A-Za-z_][\w.]*)\s*$", re.MULTILINE)


def docs_folder() -> Path:
    return package_folder("docs")


# ----- heading ids as mkdocs makes them (markdown.extensions.toc) --------------------------------


def slugify(text: str) -> str:
    """Python-Markdown's toc `slugify`: ASCII, no punctuation, lower case, runs of spaces and
    hyphens as one hyphen."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def unique(slug: str, used: set[str]) -> str:
    """A second "Options" heading is options_1 (the toc extension's rule)."""
    while slug in used or not slug:
        numbered = re.match(r"^(.*)_([0-9]+)$", slug)
        slug = f"{numbered.group(1)}_{int(numbered.group(2)) + 1}" if numbered else f"{slug}_1"
    used.add(slug)
    return slug


def heading_ids(state: StateCore) -> None:
    used: set[str] = set()
    tokens = state.tokens
    for i, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        words = [c.content for c in tokens[i + 1].children or [] if c.type in ("text", "code_inline")]
        token.attrSet("id", unique(slugify("".join(words)), used))


@lru_cache(maxsize=1)
def renderer() -> MarkdownIt:
    md = MarkdownIt("js-default")  # CommonMark with tables; raw HTML is shown as text
    md.core.ruler.push("heading_ids", heading_ids)
    return md


# ----- mkdocstrings' `::: module.object` ----------------------------------------------------------


def autodoc(dotted: str) -> str:
    """Markdown for `::: dotted`: the object's signature and docstring, from its source file."""
    module, _, name = dotted.rpartition(".")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text()) if spec and spec.origin else None
    except (ImportError, OSError, SyntaxError, ValueError):
        tree = None
    node = next(
        (
            n
            for n in (tree.body if tree else [])
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
        ),
        None,
    )
    if node is None:
        return f"`{dotted}`: see its docstring (`help({dotted})`)."
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        args = ast.unparse(init.args).removeprefix("self, ").removeprefix("self") if init else ""
        kind = "class "
    else:
        args, kind = ast.unparse(node.args), ""
    doc = ast.get_docstring(node) or ""
    return f"### `{name}`\n\n```python\n{kind}{dotted}({args})\n```\n\n```text\n{doc}\n```\n"


# ----- pages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    name: str  # e.g. "metrics.md"
    title: str  # its first heading
    body: str  # HTML


def title_of(text: str, fallback: str) -> str:
    heading = re.search(r"^# (.+)$", text, re.MULTILINE)
    return heading.group(1).strip() if heading else fallback


@lru_cache(maxsize=64)
def _render(path: Path, _mtime: float) -> Page:
    text = path.read_text(encoding="utf-8")
    text = AUTODOC.sub(lambda m: autodoc(m.group(1)), text)
    return Page(path.name, title_of(text, path.stem), renderer().render(text))


def page(name: str) -> Page:
    """The page `name` of the manual, rendered (once per version of the file)."""
    path = docs_folder() / name
    if not PAGE_NAME.fullmatch(name) or not path.is_file():
        raise HTTPException(404, f"no page {name} in the manual (see /docs/index.md)")
    return _render(path, path.stat().st_mtime)


def contents() -> list[tuple[str, str]]:
    """(name, title) of every page: the home page first, then by title."""
    pages = []
    for path in docs_folder().glob("*.md"):
        first = path.read_text(encoding="utf-8").split("\n", 3)[:3]
        pages.append((path.name, title_of("\n".join(first), path.stem)))
    return sorted(pages, key=lambda p: (p[0] != "index.md", p[1].lower()))


@router.get("/docs/", response_class=HTMLResponse)
async def manual_home(request: Request) -> Response:
    """The manual's home page (index.md); its relative links resolve under /docs/ as well."""
    return await manual_page(request, "index.md")


@router.get("/docs/{page_name}", response_class=HTMLResponse)
async def manual_page(request: Request, page_name: str) -> Response:
    shown = page(page_name)
    context = {"page": shown, "body": shown.body, "contents": contents(), "title": html.unescape(shown.title)}
    return request.app.state.templates.TemplateResponse(request, "manual.html", context)
