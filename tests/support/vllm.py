"""Real vLLM servers of the embedded default model for the tests marked `vllm` (started from
`.venv-vllm`, which `make vllm` builds): skipped without it, a failure under
`VROLLOUT_REQUIRE_VLLM=1` (as `.ci/run` sets)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from vrollout.vllm import server as vllm_server

from support import free_port


def offline_vllm_backend(pair):
    """A `VLLMBackend` on the tiny tokenizer whose servers are never contacted (nothing listens
    on the discard port): enough for its shape and its local answers."""
    from vrollout.models import ModelPair
    from vrollout.vllm.backend import VLLMBackend
    from vrollout.vllm.client import ReplicaPool
    from vrollout.vllm.remote import RemoteModel

    pool = ReplicaPool("teacher", ["http://127.0.0.1:9", "http://127.0.0.1:10"], concurrency=3)
    model = RemoteModel("tiny", "http://127.0.0.1:9", None, pair.student.tokenizer, pool, "tiny", {2})
    remote = ModelPair(model, model, True, pair.vocab_size, pair.teacher_template)
    return VLLMBackend(remote, k=20, concurrency=3)


@contextmanager
def started_servers(logs: Path, dtypes: list[str]) -> Iterator[list[vllm_server.Server]]:
    """One server per entry of `dtypes`, started together on free loopback ports and stopped
    after (a few minutes on a CPU)."""
    if not vllm_server.VLLM_PYTHON.exists():
        reason = f"{vllm_server.VLLM_PYTHON} is missing: run `make vllm`"
        if os.environ.get("VROLLOUT_REQUIRE_VLLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    servers = []
    try:
        for dtype in dtypes:
            port = free_port()
            servers.append(vllm_server.start(port, log=logs / f"vllm-{dtype}-{port}.log", dtype=dtype))
        for server in servers:
            vllm_server.wait_ready(server, timeout_s=900)
        yield servers
    finally:
        for server in servers:
            server.stop()
