"""Abuse, storage side: event-stream floods and large exports against a real `vrollout serve`.

`measure(server, idle_rss, idle_fds)` is what benchmarks/abuse.py calls (its rows: measure,
value, target, met); run alone, this file starts its own server on the default model first.
- 400 event-stream clients on 13 jobs (uploaded, so one runs and the rest wait) come at once,
  read their first event, stay 2 s and go (half of them by dropping the socket): how many were
  served and how many refused past the caps, and the server's open file descriptors before,
  while held and after (target: back to idle).
- A 1,000-line job of 1,000-token analyses (top-5 lists, the upload's default; written straight
  into the server's database, as the runner stores them, since the model would take hours):
  peak RSS of its summaries export (CSV and the page's JSON; target: under idle + 300 MiB), of
  its figures and of its steps as Parquet (a million rows), the same summaries export on a
  database from before digests (each computed on first use), and deleting the job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # support.synthetic: analyses without a model

from abuse import open_fds, peak_rss  # noqa: E402
from load import Server  # noqa: E402
from support.synthetic import synthetic_analysis  # noqa: E402
from vrollout.ids import new_id  # noqa: E402
from vrollout.pipeline.digest import digest  # noqa: E402
from vrollout.storage.jobs import Jobs  # noqa: E402
from vrollout.storage.store import Store, preview_of  # noqa: E402

Row = tuple[str, str, str, bool | None]  # measure, value, target, met (None: no target)
MIB = 1024 * 1024
ID_MARK, LINE_MARK = "@@analysis-id@@", -987654321  # replaced in each line's copy of a base
INSERT = (
    "INSERT INTO analyses (id, created_at, student, teacher, tokens, summary, preview, data, digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
MARK_DONE = "UPDATE job_items SET state = 'done', analysis_id = ?, tokens = ? WHERE job_id = ? AND line = ?"


def database_of(server: Server) -> Path:
    args = list(server.proc.args)
    return Path(args[args.index("--database") + 1])


def settle(pid: int, target: int, timeout: float = 20.0) -> int:
    """Open descriptors once they are back to `target`, or after `timeout` s."""
    deadline = time.time() + timeout
    while (now := open_fds(pid)) > target and time.time() < deadline:
        time.sleep(0.2)
    return now


def upload_jobs(url: str, jobs: int, lines: int) -> list[str]:
    text = "\n".join(
        json.dumps({"prompt": f"Say hi {n}.", "response": "Hi there, friend! " * 8}) for n in range(lines)
    )
    ids = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for n in range(jobs):
            r = http.post("/api/jobs", files={"file": (f"streams-{n}.jsonl", text.encode())})
            r.raise_for_status()
            ids.append(r.json()["job"]["id"])
    return ids


async def stream_flood(
    url: str, job_ids: list[str], clients: int, hold: float, pid: int
) -> tuple[Counter, int]:
    """`clients` event streams at once over `job_ids`: their statuses, and the most descriptors
    the server held meanwhile."""
    host, port = url.removeprefix("http://").split(":")
    most = open_fds(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, open_fds(pid))
            await asyncio.sleep(0.1)

    async def one(n: int) -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        path = f"/api/jobs/{job_ids[n % len(job_ids)]}/events"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        if status == 200:
            while b"event: progress" not in await reader.readline():
                pass
            await asyncio.sleep(hold)
        if n % 2:
            writer.transport.abort()
        else:
            writer.close()
        return status

    sampler = asyncio.create_task(sample())
    statuses = await asyncio.gather(*(one(n) for n in range(clients)))
    done.set()
    await sampler
    return Counter(statuses), most


def measure_streams(server: Server, idle_fds: int, clients: int = 400, jobs: int = 13) -> list[Row]:
    pid = server.proc.pid
    job_ids = upload_jobs(server.url, jobs, lines=12)
    time.sleep(1)
    before = open_fds(pid)
    statuses, during = asyncio.run(stream_flood(server.url, job_ids, clients, 2.0, pid))
    after = settle(pid, before)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for job_id in job_ids:  # one runs: it is cancelled first
            http.delete(f"/api/jobs/{job_id}").raise_for_status()
    cleared = settle(pid, idle_fds)
    served = ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
    held = f"{before} / {during} / {after}"
    return [
        (f"{clients} event-stream clients on {jobs} running/queued jobs", served, "", None),
        (
            "  open fds: before / while held / after they went",
            held,
            f"back to before ({before})",
            after <= before + 2,
        ),
        (
            "  open fds once the jobs are deleted",
            str(cleared),
            f"back to idle ({idle_fds})",
            cleared <= idle_fds + 2,
        ),
    ]


def fill_job(database: Path, lines: int, tokens: int, top_k: int) -> str:
    """A finished job of `lines` analyses of `tokens` steps, stored as `Jobs.complete` stores
    them (analysis, digest, preview; each line its own id), from 8 distinct bases."""
    jobs = Jobs(Store(database))
    job_id = jobs.create(
        "export.jsonl",
        {"top_k": top_k},
        [(n, {"prompt": "q", "response": "r"}) for n in range(1, lines + 1)],
        [],
    )
    bases = []
    for seed in range(8):
        a = synthetic_analysis(tokens, top_k, seed=seed, trajectory_id=f"t{seed}", reference_answer="42")
        a["id"], a["job"] = ID_MARK, {"id": job_id, "line": LINE_MARK}
        summary = a["summary"]
        bases.append((json.dumps(a, separators=(",", ":")), digest(a), json.dumps(summary), preview_of(a), a))
    with jobs.store.connect() as db:
        for n in range(1, lines + 1):
            text, made, summary, preview, a = bases[n % len(bases)]
            analysis_id = new_id()
            blob = zlib.compress(
                text.replace(ID_MARK, analysis_id).replace(str(LINE_MARK), str(n)).encode(), 1
            )
            line_digest = json.dumps({**made, "analysis_id": analysis_id, "line": n})
            models = a["student"]["model"], a["teacher"]["model"]
            row = (analysis_id, a["created_at"], *models, tokens, summary, preview, blob, line_digest)
            db.execute(INSERT, row)
            db.execute(MARK_DONE, (analysis_id, tokens, job_id, n))
    jobs.set_state(job_id, "done")
    return job_id


def timed_download(server: Server, path: str) -> tuple[float, int, float]:
    """Seconds, bytes and peak RSS (MiB) of one download, read as it streams."""
    size = 0
    with peak_rss(server) as rss, httpx.Client(base_url=server.url, timeout=1800) as http:
        start = time.perf_counter()
        with http.stream("GET", path) as r:
            r.raise_for_status()
            for piece in r.iter_bytes():
                size += len(piece)
        seconds = time.perf_counter() - start
    return seconds, size, rss["peak"]


def measure_exports(
    server: Server, idle_rss: float, lines: int = 1000, tokens: int = 1000, top_k: int = 5
) -> list[Row]:
    database = database_of(server)
    start = time.perf_counter()
    job_id = fill_job(database, lines, tokens, top_k)
    stored = time.perf_counter() - start
    size = sum(p.stat().st_size for p in database.parent.glob(database.name + "*")) / MIB
    stored_as = f"stored in {stored:.0f} s, database {size:,.0f} MiB"
    rows: list[Row] = [
        (f"{lines:,}-line job of {tokens:,}-token analyses (top-{top_k})", stored_as, "", None),
        ("  RSS before the exports", f"{server.rss_mib():.0f} MiB (idle {idle_rss:.0f})", "", None),
    ]
    exports = [
        ("summaries CSV", f"/api/jobs/{job_id}/summaries?format=csv", True),
        ("summaries JSON (the job page)", f"/api/jobs/{job_id}/summaries", True),
        ("figures", f"/api/jobs/{job_id}/figures", True),
        ("steps Parquet", f"/api/jobs/{job_id}/steps", False),
    ]
    for name, path, target in exports:
        seconds, size, peak = timed_download(server, path)
        over = peak - idle_rss
        value = f"idle + {over:.0f} MiB, {seconds:.1f} s, {size / MIB:.2f} MiB"
        rows.append(
            (
                f"  peak RSS, {name}",
                value,
                "< idle + 300 MiB" if target else "",
                over < 300 if target else None,
            )
        )
    with Store(database).connect() as db:  # as a database from before digests would be
        db.execute(
            "UPDATE analyses SET digest = NULL "
            "WHERE id IN (SELECT analysis_id FROM job_items WHERE job_id = ?)",
            (job_id,),
        )
    seconds, size, peak = timed_download(server, f"/api/jobs/{job_id}/summaries?format=csv")
    over = peak - idle_rss
    name = "  peak RSS, summaries CSV of an older database (digests made on first use)"
    rows.append((name, f"idle + {over:.0f} MiB, {seconds:.1f} s", "< idle + 300 MiB", over < 300))
    seconds, _, _ = timed_download(server, f"/api/jobs/{job_id}/summaries?format=csv")
    rows.append(("  the same export again", f"{seconds:.1f} s", "", None))
    with httpx.Client(base_url=server.url, timeout=600) as http:
        start = time.perf_counter()
        deleted = http.delete(f"/api/jobs/{job_id}").json()["analyses_deleted"]
        rows.append(
            ("  DELETE the job", f"{deleted:,} analyses in {time.perf_counter() - start:.1f} s", "", None)
        )
    return rows


def measure(
    server: Server, idle_rss: float, idle_fds: int, clients: int = 400, lines: int = 1000, tokens: int = 1000
) -> list[Row]:
    """The rows benchmarks/abuse.py prints."""
    return measure_streams(server, idle_fds, clients) + measure_exports(server, idle_rss, lines, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=400, help="event-stream clients")
    parser.add_argument("--lines", type=int, default=1000, help="lines of the exported job")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens of each of its analyses")
    args = parser.parse_args()
    database = Path(tempfile.mkdtemp()) / "abuse.sqlite3"
    server = Server([sys.executable, "-m", "vrollout.cli", "serve", "--database", str(database), "--port"])
    try:
        time.sleep(1)
        idle_rss, idle_fds = server.rss_mib(), open_fds(server.proc.pid)
        rows = measure(server, idle_rss, idle_fds, args.clients, args.lines, args.tokens)
    finally:
        server.stop()
    print(f"load average (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs")
    width = max(len(r[0]) for r in rows)
    for name, value, target, met in rows:
        mark = "" if met is None else ("  ok" if met else "  MISSED")
        print(f"{name:<{width}}  {value}  {target}{mark}")


if __name__ == "__main__":
    main()
