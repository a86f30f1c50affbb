"""A flood of oversized prompts against a real uvicorn in this process: each is refused while it
streams in, memory stays flat, and file descriptors and RSS return to their idle level."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time

from support.live import live_app, open_fds

PROMPT_BYTES = 8 * 1024 * 1024 - 4096  # just under the body limit: only the text caps refuse it
CLIENTS = 10


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def post_and_read_status(port: int, body: bytes) -> int:
    """POST `body` to /api/analyze in 64 KiB pieces (the server may refuse mid-way) and read the
    status line of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        view = memoryview(body)
        try:
            for start in range(0, len(body), 65536):
                sock.sendall(view[start : start + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was all sent: the answer is already there
        return int(sock.recv(64).split()[1])


def test_oversized_prompts_are_refused_with_flat_memory_and_nothing_left_open(tiny, tmp_path):
    body = json.dumps({"prompt": "x" * PROMPT_BYTES, "response": "y"}).encode()  # one, shared
    with live_app(tiny, tmp_path) as (_, port):
        post_and_read_status(port, body)  # warm up: the thread pool, first-request imports
        gc.collect()
        idle_fds, idle_rss = open_fds(), rss_mib()
        peak, flooding = idle_rss, True

        def sample() -> None:
            nonlocal peak
            while flooding:
                peak = max(peak, rss_mib())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses: list[int] = []
        clients = [
            threading.Thread(target=lambda: statuses.append(post_and_read_status(port, body)))
            for _ in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        flooding = False
        sampler.join()
        gc.collect()
        deadline = time.time() + 10
        while open_fds() > idle_fds and time.time() < deadline:
            time.sleep(0.05)
        after_fds, after_rss = open_fds(), rss_mib()
    assert statuses == [413] * CLIENTS
    assert peak - idle_rss < 300, f"peak RSS {peak - idle_rss:.0f} MiB over idle"
    assert after_rss - idle_rss < 50, f"RSS {after_rss - idle_rss:.0f} MiB over idle after the flood"
    assert after_fds <= idle_fds, f"{after_fds - idle_fds} descriptors more than idle"
