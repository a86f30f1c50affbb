"""Screenshots of every page, at 1400 and 800 px wide, in headless Chromium (Debian's), against a
real `vrollout serve` on the embedded default model and a fresh database: what a reader sees
first. Made before each release and looked at (#28); `--readme` also writes the README's picture
(docs/img/analysis.png: the analysis page's first screen at 1400 px).

It makes, through the JSON API as a user would: one analysis (17*23, with continuations and the
recovery curve), one conversation of two turns, a job of examples/trajectories.jsonl, a
localization job (examples/make_localization_data.py) and a pedagogical job; then opens `/`,
`/upload`, `/jobs`, `/analyses`, each analysis, each job page, the localization page and a page of
the manual. Console errors are printed (there should be none). Takes a few minutes on 2 CPUs.

    .venv/bin/python docs/screenshots.py [--out /tmp/shots] [--readme]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
WIDTHS = (1400, 800)
CONVERSATION = {
    "id": "two-turns",  # the default model's template renders no tool calls: a user's second turn
    "messages": [
        {"role": "user", "content": "What is 17*20?"},
        {"role": "assistant", "content": "17*20 = 340."},
        {"role": "user", "content": "And 17*23?"},
        {"role": "assistant", "content": "17*23 = 381."},
    ],
    "privileged": "17*23 = 391",
    "reference_answer": "391",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, database: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "VROLLOUT_DATABASE": str(database), "VROLLOUT_API_TOKEN": ""}
        cmd = [sys.executable, "-m", "vrollout.cli", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if self.get("/api/health")["ok"]:
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("the server did not start")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.load(r)

    def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise SystemExit(f"POST {path}: {e.code} {e.read().decode()}") from None

    def upload(self, text: str, **fields: str) -> str:
        """POST /api/jobs with a file (multipart, as curl -F does); the job's id."""
        boundary = "vrolloutscreenshots"
        parts = [(k, None, v) for k, v in fields.items()] + [("file", "lines.jsonl", text)]
        body = b""
        for name, filename, value in parts:
            disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n".encode()
        body += f"--{boundary}--\r\n".encode()
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        req = urllib.request.Request(self.url + "/api/jobs", body, headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)["job"]["id"]

    def wait(self, job: str) -> None:
        while self.get(f"/api/jobs/{job}")["state"] not in ("done", "failed", "cancelled"):
            time.sleep(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def make_data(server: Server) -> dict[str, str]:
    """What the pages show: two analyses and three jobs. Paths by name."""
    analysis = server.post(
        "/api/analyze",
        {"prompt": "What is 17*23?", "response": "17*23 = 381.", "privileged": "17*23 = 391",
         "reference_answer": "391", "continuation_tokens": 8, "recovery": True},
    )  # fmt: skip
    conversation = server.post("/api/analyze", CONVERSATION)
    job = server.upload((REPO / "examples" / "trajectories.jsonl").read_text())
    lines = subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_localization_data.py"), "--problems", "6",
         "--per-problem", "2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    localization = server.upload(lines)
    prompts = "".join(
        json.dumps({"id": f"p{a}", "prompt": f"What is {a}*23?", "privileged": f"{a}*23 = {a * 23}",
                    "reference_answer": str(a * 23)}) + "\n"
        for a in (17, 19)
    )  # fmt: skip
    pedagogical = server.upload(prompts, mode="pedagogical", max_new_tokens="24", sweep="0.01,0.2")
    for each in (job, localization, pedagogical):
        server.wait(each)
    return {
        "index": "/",
        "upload": "/upload",
        "jobs": "/jobs",
        "analyses": "/analyses",
        "analysis": f"/analyses/{analysis['id']}",
        "conversation": f"/analyses/{conversation['id']}",
        "job": f"/jobs/{job}",
        "localization": f"/jobs/{localization}/localization",
        "localization-job": f"/jobs/{localization}",
        "pedagogical-job": f"/jobs/{pedagogical}",
        "manual": "/docs/metrics.md",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/shots"))
    parser.add_argument("--readme", action="store_true", help="also write docs/img/analysis.png")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("chromium is needed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "db.sqlite3")
        try:
            pages = make_data(server)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for width in WIDTHS:
                    context = browser.new_context(viewport={"width": width, "height": 900})
                    for name, path in pages.items():
                        page = context.new_page()
                        errors: list[str] = []
                        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                        said = errors.append
                        page.on("console", lambda m, said=said: m.type == "error" and said(m.text))
                        page.goto(server.url + path, wait_until="networkidle")
                        shot = args.out / f"{name}-{width}.png"
                        page.screenshot(path=shot)  # the first screen: what a reader sees first
                        page.screenshot(path=args.out / f"{name}-{width}-full.png", full_page=True)
                        if args.readme and name == "analysis" and width == 1400:
                            shutil.copy(shot, REPO / "docs" / "img" / "analysis.png")
                        print(f"{shot}{'  console errors: ' + '; '.join(errors) if errors else ''}")
                        page.close()
                    context.close()
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
