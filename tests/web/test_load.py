"""50 concurrent clients against a real uvicorn on the tiny model (benchmarks/load.py, smaller):
every answer equals the same request run alone, no errors, and health answers throughout."""

from __future__ import annotations

import asyncio
import sys

from support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from load import Server, run_load  # noqa: E402

SERVE_TINY = """
import sys
import torch
import uvicorn
sys.path.insert(0, "tests")
from support.tiny import tiny_pair
from vrollout.config import Settings
from vrollout.web.app import create_app
from vrollout.pipeline.analyzer import Analyzer
torch.set_num_threads(1)  # leave a core to the clients on a small machine
settings = Settings(database=sys.argv[1], chunk_size=8)
app = create_app(settings, analyzer=Analyzer(tiny_pair(), settings))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def test_fifty_concurrent_clients(tmp_path):
    server = Server([sys.executable, "-c", SERVE_TINY, str(tmp_path / "db.sqlite3")])
    try:
        report = asyncio.run(run_load(server.url, clients=50, rounds=1, job_lines=8))
        peak = server.rss_mib("VmHWM")
    finally:
        server.stop()
    assert report.errors == []
    assert report.analyses == 50 and report.requests == 150
    # Health kept answering through the load; its latency is benchmarks/load.py's to print (a bound on wall
    # time here would fail on a busy machine, not on a bug).
    assert len(report.health_ms) > 10, report.health_ms
    assert peak < 2048, f"peak RSS {peak:.0f} MiB"
