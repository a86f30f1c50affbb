"""Start a local vLLM server for a model folder (tests, benchmarks, trying the backend out).

`make vllm` builds its environment, `.venv-vllm` (vLLM pins its own torch, transformers and
FastAPI, so it stays out of the app's). `python -m vrollout.vllm.server --port 8101` serves the
embedded default model on the CPU until interrupted. No part of the app imports this.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from vrollout.config import Settings
from vrollout.models import default_model_folder

# `make vllm` builds .venv-vllm at the top of the source tree; elsewhere name its Python.
VLLM_PYTHON = Path(
    os.environ.get(
        "VROLLOUT_VLLM_PYTHON", Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
    )
)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Gone at once, as a crashed or unplugged replica is (its engine process group too)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, grace_s: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()


def start(
    port: int,
    model: Path | None = None,
    log: Path | None = None,
    max_logprobs: int = 20,
    python: Path = VLLM_PYTHON,
    dtype: str = "bfloat16",
) -> Server:
    """Start `vllm.entrypoints.openai.api_server` on 127.0.0.1:`port` (returns at once; see
    `wait_ready`). A 2 GiB KV cache and 2,048-token sequences: sized for a small CPU box. bf16 is
    fast; `dtype="float32"` gives log-probs as exact as the local fp32 engine's."""
    if not python.exists():
        raise FileNotFoundError(f"{python} is missing: run `make vllm` first")
    model = model or default_model_folder(Settings().cache_dir)
    log = log or Path(f"/tmp/vllm-{port}.log")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--max-logprobs", str(max_logprobs),
        "--dtype", dtype, "--max-model-len", "2048", "--disable-log-stats",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Server(f"http://127.0.0.1:{port}", process, log)


def wait_ready(server: Server, timeout_s: float = 600.0) -> None:
    """Until `/v1/models` answers; raises with the log's tail if the server dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"vLLM on {server.url} exited:\n{_tail(server.log)}")
        try:
            if httpx.get(server.url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    server.kill()
    raise TimeoutError(f"vLLM on {server.url} not ready after {timeout_s:.0f} s:\n{_tail(server.log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m vrollout.vllm.server", description=__doc__)
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model", type=Path, help="a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--max-logprobs", type=int, default=20)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the server too
    server = start(args.port, args.model, max_logprobs=args.max_logprobs, dtype=args.dtype)
    print(f"starting vLLM on {server.url} (log: {server.log})", file=sys.stderr)
    try:
        wait_ready(server)
        print(f"ready: {server.url}", file=sys.stderr)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
