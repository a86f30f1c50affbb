"""Abuse: what hostile clients cost a real `vrollout serve` on the default model, beside the targets.

Starts `vrollout serve` (SmolLM2-135M, a fresh database) like benchmarks/load.py, then, one after
the other, while a probe asks `/api/health` every 50 ms:
- 30 concurrent prompts of 8 MiB (just under VROLLOUT_MAX_REQUEST_BYTES): the server's peak RSS
  during them against its idle RSS (target: under idle + 300 MiB), health p99 meanwhile (target
  < 200 ms) and the time to refuse each, from the last byte sent to the answer (target < 100 ms);
- 300 slow connections that send half a request head and wait: health p99 while they hang on
  (target < 200 ms), and open file descriptors once the header deadline has closed them
  (VROLLOUT_HEADER_TIMEOUT_S; target: back to idle);
- 3 concurrent uploads of a Parquet decompression bomb (a 1 KB file: 600 rows that all point at
  one 5 MB dictionary value, 3 GB decoded): peak RSS against idle (target: under idle + 300 MiB),
  the time to refuse each from the last byte sent (target < 100 ms), health p99 meanwhile;
- 2 concurrent uploads whose lines ask for siblings with answers math-verify takes minutes over
  (`$9^{9^{9^{10}}}$`), while one analysis with a reference answer and one without run: each
  analysis's time (target < 5 s: the model's math checks never wait behind an upload's), each
  upload's time to answer (its math-check budget: a few deadlines), health p99 meanwhile;
- 6 concurrent uploads of 20,000 lines each: peak RSS (target: under idle + 300 MiB), the time to
  refuse those past the 2 validated at once (429, target < 100 ms), health p99; then an upload
  whose client leaves mid-validation (target: no job created);
- from benchmarks/abuse_storage.py, when present: open file descriptors after 400 event-stream
  clients come and go (target: back to idle), and peak RSS of a summaries export of a 1,000-line
  job of 1,000-token analyses (target: under idle + 300 MiB).
Prints one table: measure, value, target, whether it is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import Server, percentile  # noqa: E402

MIB = 1024 * 1024
BODY_LIMIT = 8 * MIB  # VROLLOUT_MAX_REQUEST_BYTES's default


def health_row(probe) -> tuple[str, str, str, bool]:
    """The table's row for /api/health's p99 while an attack ran (`probe`: a `Probe`'s timings)."""
    p99 = percentile(probe.times, 99)
    health = f"{p99:.0f} ms ({len(probe.times)} probes, {len(probe.errors)} errors)"
    return ("  health p99 meanwhile", health, "< 200 ms", p99 < 200 and not probe.errors)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def peak_rss(server: Server) -> Iterator[dict[str, float]]:
    """The server's peak RSS (MiB) over the block: its high-water mark, reset first where the
    kernel allows (clear_refs 5), and samples every 10 ms either way."""
    result = {"peak": server.rss_mib()}
    with contextlib.suppress(OSError):
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    reset = server.rss_mib("VmHWM") <= result["peak"] + 1
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            result["peak"] = max(result["peak"], server.rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        if reset:
            result["peak"] = max(result["peak"], server.rss_mib("VmHWM"))


class Probe:
    """Asks /api/health every 50 ms on its own connection, in a thread; latencies in ms."""

    def __init__(self, url: str) -> None:
        self.url, self.times, self.errors = url, [], []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._done.is_set():
                start = time.perf_counter()
                try:
                    status = http.get("/api/health").status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                self.times.append((time.perf_counter() - start) * 1000)
                if status != 200:
                    self.errors.append(status)
                self._done.wait(0.05)


async def big_prompts(url: str, clients: int, size: int) -> tuple[list[float], list[int]]:
    """`clients` prompts of `size` bytes at once: milliseconds from the last byte sent to the
    answer, and the statuses."""
    body = json.dumps({"prompt": "x" * (size - 40), "response": "y"}).encode()
    assert len(body) <= size
    limits = httpx.Limits(max_connections=clients)

    async def one(http: httpx.AsyncClient) -> tuple[float, int]:
        sent = 0.0

        async def content() -> object:
            nonlocal sent
            for i in range(0, len(body), MIB):
                yield body[i : i + MIB]
            sent = time.perf_counter()

        headers = {"content-type": "application/json", "content-length": str(len(body))}
        r = await http.post("/api/analyze", content=content(), headers=headers)
        answered = time.perf_counter()
        return (answered - sent) * 1000 if sent else 0.0, r.status_code  # 0: answered before the end

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        results = await asyncio.gather(*(one(http) for _ in range(clients)))
    return [t for t, _ in results], [s for _, s in results]


def parquet_bomb(rows: int = 600, size: int = 5_000_000) -> bytes:
    """`rows` rows whose prompt all point at one `size`-byte dictionary value (issue #24, item 4)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    prompt = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * size]))
    buf = io.BytesIO()
    pq.write_table(
        pa.table({"prompt": prompt, "response": ["y"] * rows}), buf, compression="zstd", store_schema=False
    )
    return buf.getvalue()


async def bomb_uploads(url: str, clients: int) -> tuple[list[float], list[int]]:
    """`clients` uploads of the Parquet bomb at once: milliseconds from sending to the answer
    (the file is about 1 KB: sending is instant), and the statuses."""
    data = parquet_bomb()

    async def one(http: httpx.AsyncClient) -> tuple[float, int]:
        start = time.perf_counter()
        r = await http.post("/api/jobs", files={"file": ("bomb.parquet", data)})
        return (time.perf_counter() - start) * 1000, r.status_code

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        results = await asyncio.gather(*(one(http) for _ in range(clients)))
    return [t for t, _ in results], [s for _, s in results]


CRAFTED = r"so the answer is $9^{9^{9^{10}}}$"  # sympy compares it with 5 for minutes (#24 item 2)


def crafted_upload(lines: int = 200) -> bytes:
    """Lines of one prompt that ask for a sibling, each needing a math check that misses its deadline."""
    return "\n".join(
        json.dumps({"prompt": "what is 2+3?", "response": f"{CRAFTED} ({i})", "reference_answer": "5"})
        for i in range(lines)
    ).encode()


async def crafted_checks(url: str, uploads: int) -> tuple[list[float], list[int], list[float]]:
    """`uploads` crafted uploads at once, and meanwhile two analyses (with and without a
    reference answer): the uploads' times and statuses, and each analysis's time (ms)."""
    data = crafted_upload()

    async def up(http: httpx.AsyncClient) -> tuple[float, int]:
        start = time.perf_counter()
        r = await http.post("/api/jobs", files={"file": ("crafted.jsonl", data)},
                            data={"teacher_context": "sibling"})  # fmt: skip
        return (time.perf_counter() - start) * 1000, r.status_code

    async def analysis(http: httpx.AsyncClient, body: dict[str, str]) -> float:
        await asyncio.sleep(1.0)  # the uploads are in their checks by now
        start = time.perf_counter()
        r = await http.post("/api/analyze", json=body)
        assert r.status_code == 200, r.text
        return (time.perf_counter() - start) * 1000

    with_reference = {"prompt": "What is 2+2?", "response": r"\boxed{4}", "reference_answer": "4"}
    without = {"prompt": "What is 2+2?", "response": "It is 4."}
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        *ups, first, second = await asyncio.gather(
            *(up(http) for _ in range(uploads)), analysis(http, with_reference), analysis(http, without)
        )
    return [t for t, _ in ups], [s for _, s in ups], [first, second]


def big_upload(lines: int = 20_000) -> bytes:
    line = {"prompt": "What is 17*23?", "response": "17*23 = 391. " * 20, "reference_answer": "391"}
    return "\n".join(json.dumps({**line, "id": str(i)}) for i in range(lines)).encode()


async def upload_flood(url: str, clients: int) -> tuple[list[float], list[int]]:
    """`clients` uploads of 20,000 lines at once: milliseconds from sending to the answer (the
    file is sent at once: a refusal's time is the server's), and the statuses."""
    data = big_upload()

    async def one(http: httpx.AsyncClient) -> tuple[float, int]:
        start = time.perf_counter()
        r = await http.post("/api/jobs", files={"file": ("big.jsonl", data)})
        return (time.perf_counter() - start) * 1000, r.status_code

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        results = await asyncio.gather(*(one(http) for _ in range(clients)))
    return [t for t, _ in results], [s for _, s in results]


def upload_and_leave(url: str) -> int:
    """An upload of 20,000 lines whose client closes its connection a second after sending: the
    jobs there are once its validation would have ended (target: none more than before)."""
    before = len(httpx.get(f"{url}/api/jobs", timeout=30).json())
    request = httpx.Request("POST", f"{url}/api/jobs", files={"file": ("left.jsonl", big_upload())})
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /api/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + b"\r\n" + request.read())
        time.sleep(1)
    time.sleep(60)  # longer than validating 20,000 lines takes
    return len(httpx.get(f"{url}/api/jobs", timeout=30).json()) - before


def slow_connections(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    held = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        held.append(sock)
    return held


Row = tuple[str, str, str, bool | None]  # measure, value, target, met (None: no target)


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    database = Path(tempfile.mkdtemp()) / "abuse.sqlite3"
    command = [sys.executable, "-m", "vrollout.cli", "serve", "--database", str(database), "--port"]
    server = Server(command, env={"VROLLOUT_HEADER_TIMEOUT_S": str(args.header_timeout)})
    try:
        pid = server.proc.pid
        time.sleep(1)
        idle_rss, idle_fds = server.rss_mib(), open_fds(pid)
        rows.append(("idle RSS", f"{idle_rss:.0f} MiB", "", None))
        rows.append(("idle open file descriptors", str(idle_fds), "", None))

        with Probe(server.url) as probe, peak_rss(server) as rss:
            refuse_ms, statuses = asyncio.run(big_prompts(server.url, args.clients, BODY_LIMIT))
        over = rss["peak"] - idle_rss
        name = f"peak RSS, {args.clients} concurrent 8 MiB prompts"
        rows.append((name, f"idle + {over:.0f} MiB", "< idle + 300 MiB", over < 300))
        refused = sum(400 <= s < 500 for s in statuses)
        answers = f"{refused}/{len(statuses)} refused, {sorted(set(statuses))}"
        rows.append(("  answers", answers, "all 4xx", refused == len(statuses)))
        worst = max(refuse_ms)
        spread = f"p50 {percentile(refuse_ms, 50):.0f} ms, max {worst:.0f} ms"
        rows.append(("  time to refuse each (last byte sent to answer)", spread, "< 100 ms", worst < 100))
        rows.append(health_row(probe))

        with Probe(server.url) as probe, peak_rss(server) as rss:
            refuse_ms, statuses = asyncio.run(bomb_uploads(server.url, args.bombs))
        over = rss["peak"] - idle_rss
        name = f"peak RSS, {args.bombs} concurrent Parquet bombs (1 KB, 3 GB decoded)"
        rows.append((name, f"idle + {over:.0f} MiB", "< idle + 300 MiB", over < 300))
        refused = sum(400 <= s < 500 for s in statuses)
        rows.append(("  answers", f"{refused}/{len(statuses)} refused, {sorted(set(statuses))}", "all 4xx",
                     refused == len(statuses)))  # fmt: skip
        worst = max(refuse_ms)
        spread = f"p50 {percentile(refuse_ms, 50):.0f} ms, max {worst:.0f} ms"
        rows.append(("  time to refuse each", spread, "< 100 ms", worst < 100))
        rows.append(health_row(probe))

        with Probe(server.url) as probe:
            took_ms, statuses, analyses_ms = asyncio.run(crafted_checks(server.url, 2))
        name = "2 concurrent uploads of crafted math answers (sibling)"
        rows.append((name, f"answered in max {max(took_ms) / 1000:.1f} s, {sorted(set(statuses))}", "", None))
        worst = max(analyses_ms)
        spread = f"with a reference {analyses_ms[0]:.0f} ms, without {analyses_ms[1]:.0f} ms"
        rows.append(("  an analysis meanwhile", spread, "< 5 s", worst < 5000))
        rows.append(health_row(probe))

        with Probe(server.url) as probe, peak_rss(server) as rss:
            took_ms, statuses = asyncio.run(upload_flood(server.url, args.uploads))
        over = rss["peak"] - idle_rss
        name = f"peak RSS, {args.uploads} concurrent uploads of 20,000 lines"
        rows.append((name, f"idle + {over:.0f} MiB", "< idle + 300 MiB", over < 300))
        refused = [t for t, s in zip(took_ms, statuses, strict=True) if s == 429]
        answers = f"{len(refused)} refused (429), {sorted(set(statuses))}"
        rows.append(("  answers", answers, f"{args.uploads - 2} refused", len(refused) == args.uploads - 2))
        worst = max(refused, default=0.0)
        rows.append(("  time to refuse each", f"max {worst:.0f} ms", "< 100 ms", worst < 100))
        rows.append(health_row(probe))
        created = upload_and_leave(server.url)
        rows.append(
            ("an upload whose client left mid-validation", f"{created} jobs created", "0", created == 0)
        )

        with Probe(server.url) as probe:
            held = slow_connections(server.url, args.slow)
            time.sleep(min(args.header_timeout / 2, 3))
            during = open_fds(pid)
            time.sleep(args.header_timeout + 1)
        after = open_fds(pid)
        for sock in held:
            sock.close()
        p99 = percentile(probe.times, 99)
        health = f"{p99:.0f} ms ({len(probe.times)} probes, {len(probe.errors)} errors)"
        rows.append((f"health p99, {args.slow} slow connections held", health, "< 200 ms", p99 < 200))
        name = f"  open fds: while held / after the {args.header_timeout:g} s header deadline"
        rows.append((name, f"{during} / {after}", f"back to idle ({idle_fds})", after <= idle_fds + 2))

        try:
            import abuse_storage  # the streams and exports of the same issue
        except ImportError:
            rows.append(
                ("event streams, summaries export", "benchmarks/abuse_storage.py not found", "", None)
            )
        else:
            rows += abuse_storage.measure(server, idle_rss=idle_rss, idle_fds=idle_fds)
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=30, help="concurrent 8 MiB prompts")
    parser.add_argument("--bombs", type=int, default=3, help="concurrent Parquet bomb uploads")
    parser.add_argument("--uploads", type=int, default=6, help="concurrent uploads of 20,000 lines")
    parser.add_argument("--slow", type=int, default=300, help="slow connections held")
    parser.add_argument(
        "--header-timeout",
        dest="header_timeout",
        type=float,
        default=5.0,
        help="the server's VROLLOUT_HEADER_TIMEOUT_S (default 10 s; shorter here to wait less)",
    )
    rows = run(parser.parse_args())
    print(f"load average (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs")
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'value':<{value_width}}  target")
    for name, value, target, met in rows:
        mark = "" if met is None else ("  ok" if met else "  MISSED")
        print(f"{name:<{width}}  {value:<{value_width}}  {target}{mark}")


if __name__ == "__main__":
    main()
