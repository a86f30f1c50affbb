"""How fast a long analysis becomes interactive in headless Chromium.

Starts `vrollout serve` on the default model, analyses a ~2,000-token trajectory, then opens
its page several times in Debian's headless Chromium and reads `performance.now()` at the
moment the page marks itself ready (chart drawn, token strip coloured, handlers attached),
i.e. the time from navigation start to interactive. Also times a tooltip and a
token-to-chart selection. Target: interactive within 2 s for 2,000 tokens.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
SENTENCE = "Let me think step by step about the multiplication of 17 and 23 before answering. "


# Where the time goes: milestones of the page load, in ms since navigation start.
MARKS = """(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const mark = (n) => Math.round(performance.getEntriesByName(n)[0].startTime);
  return {html: Math.round(nav.responseEnd), scripts_run: mark("vr-start"),
          strip_painted: mark("vr-painted"), chart_ready: Number(document.body.dataset.readyMs)};
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = os.path.join(tempfile.mkdtemp(), "bench.sqlite3")
    server = subprocess.Popen(
        [sys.executable, "-m", "vrollout.cli", "serve", "--port", str(port)],
        env={**os.environ, "VROLLOUT_DATABASE": db},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        body = {"prompt": "What is 17*23?", "response": SENTENCE * 100, "privileged": "391"}
        req = urllib.request.Request(
            url + "/api/analyze", json.dumps(body).encode(), {"content-type": "application/json"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            analysis = json.load(r)
        replay_s = time.perf_counter() - started
        tokens = len(analysis["steps"])
        page_url = f"{url}/analyses/{analysis['id']}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ready, tooltip, select, marks = [], [], [], []
            for run in range(4):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(page_url)
                page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                if run:  # the first load also warms the HTTP cache for plotly.js
                    ready.append(int(page.get_attribute("body", "data-ready-ms")))
                    marks.append(page.evaluate(MARKS))
                t0 = time.perf_counter()
                page.hover("#strip .col[data-i='1500']")
                page.wait_for_selector("#tooltip:not([hidden])")
                tooltip.append(1000 * (time.perf_counter() - t0))
                t0 = time.perf_counter()
                page.click("#strip .col[data-i='1700']")
                page.wait_for_function("document.getElementById('chart').layout.shapes.at(-1).x0 === 1700")
                select.append(1000 * (time.perf_counter() - t0))
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"analysis: {tokens} tokens, replayed by the server in {replay_s:.1f} s")
    print(f"navigation start -> interactive (median of {len(ready)}): {statistics.median(ready):.0f} ms"
          f"  (runs: {', '.join(map(str, ready))})")  # fmt: skip
    for key in marks[0]:
        print(f"  {key:>14}: {statistics.median(m[key] for m in marks):.0f} ms")
    print(f"hover -> tooltip shown: {statistics.median(tooltip):.0f} ms")
    print(f"click token -> marked in chart: {statistics.median(select):.0f} ms")
    verdict = "PASS" if statistics.median(ready) <= 2000 and tokens >= 2000 else "FAIL"
    print(f"target: interactive within 2000 ms for >= 2000 tokens: {verdict}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
