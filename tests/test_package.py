"""The installable package: a wheel built from the source tree holds every module, template and
asset, and no top-level `app`; installed into a fresh virtual environment outside the tree,
`vrollout serve` started from an empty folder serves every page and asset to headless Chromium
with no 404 and no console error.

The fresh environment gets the dependencies of .venv through a .pth line naming .venv's
site-packages (no download, no second torch). Python does not process .pth files found in a
folder added that way, so the editable install of the source tree stays invisible there; the
tests check that `vrollout` comes from the wheel and that `app` does not import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support import REAL_CACHE, REPO, free_port

TOKEN = "package-test-token"
SOURCES = ("pyproject.toml", "README.md", "app", "templates", "static", "docs")


# Declared, never imported by our code: what another package needs from us at run time.
RUN_TIME_ONLY = {
    "gguf": "transformers reads the default model's GGUF file with it",
    "accelerate": "transformers refuses to load a GGUF file without it",
    "python-multipart": "FastAPI's forms and file uploads",
}
TOOLS = {
    "ruff": "the linter, run by `make lint`",
    "pytest-xdist": "`make test` and `make test-all` run the tests on every core",
    "pytest-timeout": "a hung test fails with a traceback",
    "mkdocs-material": "the documentation site's theme (`make docs`, tests/test_docs.py)",
    "mkdocstrings-python": "the Python API page rendered from docstrings",
}


def source_files(folder: str) -> set[str]:
    """The files of a source folder that belong in the wheel (relative paths)."""
    root = REPO / folder
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def imported_distributions(*folders: str) -> set[str]:
    """The distributions whose modules the code in `folders` imports (standard library and our
    own modules aside)."""
    modules = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    owners = importlib.metadata.packages_distributions()
    found = {canonicalize_name(d) for m in modules - set(sys.stdlib_module_names) for d in owners.get(m, [])}
    return found - {"virtual-rollout"}


def test_declared_dependencies_are_the_imported_ones():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    test_extra = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["test"]}
    optional = {  # the package's own extras (hf, trl): imported only where a user asks for them
        canonicalize_name(Requirement(r).name)
        for extra, reqs in project["optional-dependencies"].items()
        if extra != "test"
        for r in reqs
    }
    used = imported_distributions("app")
    assert used - declared - optional == set()  # every import of the package is declared
    # Every extra is used; trl's is what the callback runs inside (it imports transformers only).
    assert optional - used == {"trl"}
    assert declared - used == set(RUN_TIME_ONLY)  # every declaration is used
    used_by_tests = imported_distributions("tests", "benchmarks")
    assert used_by_tests - declared - test_extra == set()
    assert test_extra - used_by_tests == set(TOOLS)
    assert not test_extra & declared  # nothing twice


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` on a clean copy of the tree (no stale build/ folder, nothing written here)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in (*SOURCES, *(p.name for p in REPO.glob("LICEN[CS]E*"))):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, src / name, **(
            {"ignore": ignore} if (REPO / name).is_dir() else {}
        ))  # fmt: skip
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run([*cmd, str(src), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("virtual_rollout-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with only the wheel installed (plus .venv's dependencies)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    done = subprocess.run([*install, "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    site = run_in(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_dependencies_from_dot_venv.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


def run_in(venv: Path, code: str, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_wheel_holds_the_package_and_its_data(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode()
    assert top_level.split() == ["vrollout"]
    assert not any(n.startswith("app/") or n == "app.py" for n in names)  # nothing installs `app`
    modules = {f for f in source_files("app") if f.endswith(".py")}
    assert {f"vrollout/{f}" for f in modules} <= names
    assert {f"vrollout/templates/{f}" for f in source_files("templates")} <= names
    assert {f"vrollout/static/{f}" for f in source_files("static")} <= names
    assert {f"vrollout/docs/{f}" for f in source_files("docs") if f.endswith(".md")} <= names  # /docs/PAGE.md
    assert any(n.startswith("vrollout/static/vendor/plotly-basic-") for n in names)
    assert "vrollout/notebook.py" in names


def test_the_fresh_environment_imports_the_wheel_and_its_declared_dependencies(fresh, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = """
import importlib.metadata as md, importlib.util, json, sys, sysconfig
from packaging.requirements import Requirement
import vrollout
from vrollout.config import Settings
loaded = sorted(m for m in ("torch", "transformers", "fastapi") if m in sys.modules)
dist = md.distribution("virtual-rollout")
unmet = []
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate():
        try:
            if not req.specifier.contains(md.version(req.name), prereleases=True):
                unmet.append(line)
        except md.PackageNotFoundError:
            unmet.append(line)
print(json.dumps({
    "site": sysconfig.get_paths()["purelib"], "vrollout": vrollout.__file__, "loaded": loaded,
    "app": importlib.util.find_spec("app") is not None, "dist": str(dist.locate_file("")),
    "templates": str(Settings().templates_dir), "static": str(Settings().static_dir), "unmet": unmet,
    "notebook": vrollout.load.__module__,
}))
"""
    got = json.loads(run_in(fresh, code, cwd=empty))
    site = got["site"]
    assert got["vrollout"] == f"{site}/vrollout/__init__.py"  # the wheel, not the source tree
    assert got["dist"].rstrip("/") == site
    assert got["templates"] == f"{site}/vrollout/templates" and got["static"] == f"{site}/vrollout/static"
    assert got["app"] is False and got["loaded"] == [] and got["unmet"] == []
    assert got["notebook"] == "vrollout.notebook"
    assert list(empty.iterdir()) == []


@pytest.fixture(scope="module")
def served(fresh, tmp_path_factory):
    """`vrollout serve` (the wheel's console script) from an empty folder, with a token."""
    folder = tmp_path_factory.mktemp("empty-folder")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("VROLLOUT_")}
    env.update(VROLLOUT_CACHE_DIR=str(REAL_CACHE), VROLLOUT_API_TOKEN=TOKEN)
    log = (tmp_path_factory.mktemp("log") / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(fresh / "bin" / "vrollout"), "serve", "--port", str(port)],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=300)
    deadline = time.time() + 240
    while True:
        assert proc.poll() is None, Path(log.name).read_text()
        try:
            if client.get("/api/health").json()["ok"]:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.3)
    yield url, client, fresh
    proc.terminate()
    proc.wait(timeout=30)
    client.close()


def watch(page) -> list[str]:
    """Everything that went wrong while the page loaded: failed or 4xx/5xx requests (any 404),
    console errors (CSP violations among them) and uncaught exceptions."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    # Following a download link aborts that navigation (net::ERR_ABORTED): the download is checked.
    page.on(
        "requestfailed",
        lambda r: r.url.endswith("/download") or problems.append(f"failed: {r.url} {r.failure}"),
    )
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
    return problems


@pytest.mark.browser
@pytest.mark.real_model
def test_every_page_and_asset_of_the_installed_package(served, browser, tmp_path):
    url, client, venv = served
    analysis = client.post("/api/analyze", json={"prompt": "What is 17*23?", "response": "17*23 = 381."})
    assert analysis.status_code == 200, analysis.text
    aid = analysis.json()["id"]
    lines = [{"prompt": "What is 2+2?", "response": "2+2 = 4."}, {"prompt": "Hi", "response": "Hello!"}]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    job = client.post("/api/jobs", files={"file": ("runs.jsonl", data)}).json()["job"]["id"]

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems = watch(page)
    page.goto(url + "/jobs")
    page.wait_for_url("**/login?next=*")  # the token: every page asks for it, the login page renders
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(url + "/jobs")

    rendered = {  # page -> what shows that it rendered (the data and the scripts ran)
        "/": "#prompt",
        "/upload": "#file",
        "/jobs": f"a[href='/jobs/{job}']",
        f"/jobs/{job}": "body[data-job-state='done'][data-loaded='2'] #fig-signal .main-svg",
        "/analyses": f"a[href='/analyses/{aid}']",
        f"/analyses/{aid}": "body[data-ready='1'] #chart .main-svg",
        "/docs": "#swagger-ui .opblock",
        "/login": "#token",
    }
    for path, selector in rendered.items():
        page.goto(url + path)
        page.wait_for_selector(selector, timeout=120_000)
        page.wait_for_load_state("load")
        assert page.title(), path
    page.goto(url + f"/analyses/{aid}")
    with page.expect_download() as download:  # the one-file page: opens offline
        page.click("#download-link")
    saved = tmp_path / "analysis.html"
    download.value.save_as(saved)
    page.goto(saved.as_uri())
    page.wait_for_selector("body[data-ready='1'] #chart .main-svg", timeout=30_000)

    # Every asset the package ships, fetched by the browser and equal to the installed file.
    static = Path(run_in(venv, "import vrollout.config as c; print(c.Settings().static_dir)").strip())
    assets = sorted(p.relative_to(static).as_posix() for p in static.rglob("*") if p.is_file())
    page.goto(url + "/")
    fetched = page.evaluate(
        """async paths => Promise.all(paths.map(async p => {
             const r = await fetch('/static/' + p);
             return [p, r.status, (await r.arrayBuffer()).byteLength];
           }))""",
        assets,
    )
    assert fetched == [[p, 200, (static / p).stat().st_size] for p in assets]
    assert any(p.startswith("vendor/plotly-basic-") for p in assets)
    context.close()
    assert problems == []
