"""Load: many concurrent clients against a real uvicorn, and whether the server stays responsive.

Starts `vrollout serve` on the default model (a fresh database), runs each analysis request
alone to get the expected answers, then lets `--clients` concurrent clients mix analyses, page
views (`/`, `/analyses/{id}`) and job polling (`GET /api/jobs/{id}` of a running upload) while a
separate probe asks `/api/health` every 50 ms. Checks every answer against the one run alone.
Prints requests, concurrency, errors, p50/p99 latency of health and of page views while the
model works, and the server's peak RSS. Targets: no errors, every answer equal, health p99 under
200 ms. tests/test_load.py runs a smaller version of `run_load` on the tiny model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    ("What is 17*23?", "17*23 = 381.", "17*23 = 391"),
    ("Name the capital of France.", "The capital of France is Paris.", "Paris"),
    ("What is 12+30?", "12+30 = 42, so the answer is 42.", "42"),
    ("Spell 'cat' backwards.", "Backwards, cat is 'tac'.", "tac"),
]
FINAL = ("done", "cancelled")
BODIES = [{"prompt": p, "response": r, "privileged": s, "top_k": 3} for p, r, s in PROMPTS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn in a subprocess: `command` gets the port appended."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*command, str(self.port)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).json()["ok"]:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError("the server did not start")

    def rss_mib(self, field: str = "VmRSS") -> float:
        """The server's resident memory now (VmRSS) or its high-water mark so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def comparable(analysis: dict) -> dict:
    """What must be identical between an analysis run alone and one run under load."""
    steps = analysis["steps"]
    return {
        "response_ids": analysis["response_ids"],
        "top1": [s["teacher_top1_id"] for s in steps],
        "rank": [s["teacher_rank"] for s in steps],
        "reverse_kl": [round(s["reverse_kl"], 4) for s in steps],
        "teacher_logprob": [round(s["teacher_logprob"], 4) for s in steps],
    }


@dataclass
class Report:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    page_ms: list[float] = field(default_factory=list)
    analyses: int = 0
    seconds: float = 0.0


async def run_load(url: str, clients: int, rounds: int, job_lines: int = 20) -> Report:
    """`clients` concurrent clients, each doing `rounds` rounds of (analysis, page view, job poll)."""
    report = Report()
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        expected = []
        for body in BODIES:  # each request alone first: the answers to hold the load to
            r = await http.post("/api/analyze", json=body)
            r.raise_for_status()
            expected.append(comparable(r.json()))
        stored = r.json()["id"]
        lines = "\n".join(json.dumps(BODIES[i % len(BODIES)]) for i in range(job_lines))
        job = (await http.post("/api/jobs", files={"file": ("load.jsonl", lines.encode())})).json()["job"]
        model_busy = asyncio.Event()
        done = asyncio.Event()

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=60) as own:
                while not done.is_set():
                    start = time.perf_counter()
                    r = await own.get("/api/health")
                    if r.status_code != 200:
                        report.errors.append(f"health: {r.status_code}")
                    report.health_ms.append((time.perf_counter() - start) * 1000)
                    await asyncio.sleep(0.05)

        async def client(n: int) -> None:
            for k in range(rounds):
                i = (n + k) % len(BODIES)
                model_busy.set()
                r = await http.post("/api/analyze", json=BODIES[i])
                report.requests += 1
                if r.status_code != 200:
                    report.errors.append(f"analyze: {r.status_code} {r.text[:200]}")
                elif comparable(r.json()) != expected[i]:
                    report.errors.append(f"analyze: the answer to request {i} differs from the one alone")
                else:
                    report.analyses += 1
                path = "/" if k % 2 else f"/analyses/{stored}"
                start = time.perf_counter()
                r = await http.get(path, headers={"accept": "text/html"})
                report.page_ms.append((time.perf_counter() - start) * 1000)
                report.requests += 1
                if r.status_code != 200 or (path != "/" and stored not in r.text):
                    report.errors.append(f"page {path}: {r.status_code}")
                r = await http.get(f"/api/jobs/{job['id']}")
                report.requests += 1
                if r.status_code != 200 or r.json()["id"] != job["id"] or r.json()["failed"]:
                    report.errors.append(f"job poll: {r.status_code} {r.text[:200]}")

        started = time.perf_counter()
        probing = asyncio.create_task(probe())
        await asyncio.gather(*(client(n) for n in range(clients)))
        while (state := (await http.get(f"/api/jobs/{job['id']}")).json())["state"] not in FINAL:
            await asyncio.sleep(0.2)
        report.seconds = time.perf_counter() - started
        done.set()
        await probing
        if (state["state"], state["done"], state["failed"]) != ("done", job_lines, 0):
            report.errors.append(f"job: {state['state']}, {state['done']} done, {state['failed']} failed")
    return report


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    database = Path(tempfile.mkdtemp()) / "load.sqlite3"
    server = Server([sys.executable, "-m", "vrollout.cli", "serve", "--database", str(database), "--port"])
    try:
        idle = server.rss_mib()
        report = asyncio.run(run_load(server.url, args.clients, args.rounds))
        peak, after = server.rss_mib("VmHWM"), server.rss_mib()
    finally:
        server.stop()
    print(f"load average (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs")
    print(f"{report.requests} requests from {args.clients} concurrent clients in {report.seconds:.1f} s")
    print(f"errors: {len(report.errors)}; analyses equal to the same request alone: {report.analyses}")
    for error in report.errors[:10]:
        print("  ", error)
    for name, values in (("health", report.health_ms), ("page views", report.page_ms)):
        print(
            f"{name}: {len(values)} requests, p50 {percentile(values, 50):.0f} ms, "
            f"p99 {percentile(values, 99):.0f} ms, max {max(values):.0f} ms"
        )
    print(f"server RSS: {idle:.0f} MiB after start-up, peak {peak:.0f} MiB, {after:.0f} MiB after the load")
    print("targets: no errors, health p99 < 200 ms")


if __name__ == "__main__":
    main()
