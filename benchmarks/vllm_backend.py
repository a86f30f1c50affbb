"""The vLLM backend: the same trajectories through a job on the local backend and on vLLM with
1 and 2 replicas, throughput side by side.

Starts its own vLLM servers of the default model on loopback ports (`make vllm` first), or
reuses running ones (`--urls http://127.0.0.1:8101,http://127.0.0.1:8102`). Each run goes
through `JobRunner.run_job` on a fresh database, as an uploaded file does. Prints tokens per
second, the speed-up over local, and how far the vLLM numbers are from the local ones
(teacher log-prob: bf16 against fp32; reverse KL: the top-K lower bound against the exact).
On this project's 2-core CPU machines the servers share the two cores with each other and
with this script, so two replicas cannot beat one here; on GPUs each replica brings its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import trajectories  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.jobs.runner import JobRunner  # noqa: E402
from vrollout.jobs.worker import ModelWorker  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402
from vrollout.storage.jobs import Jobs  # noqa: E402
from vrollout.storage.store import Store  # noqa: E402
from vrollout.vllm import server as vllm_server  # noqa: E402


def run_job(analyzer: Analyzer, lines: list[dict], folder: Path, name: str) -> tuple[float, dict[int, dict]]:
    jobs = Jobs(Store(folder / f"{name}.sqlite3"))
    job_id = jobs.create(name, {}, list(enumerate(lines, start=1)), [])
    runner = JobRunner(jobs, analyzer, ModelWorker())
    started = time.perf_counter()
    asyncio.run(runner.run_job(job_id))
    seconds = time.perf_counter() - started
    job = jobs.get(job_id)
    assert (job["done"], job["failed"]) == (len(lines), 0), job
    return seconds, {a["job"]["line"]: a for a in jobs.analyses(job_id)}


def compare(local: dict[int, dict], remote: dict[int, dict]) -> str:
    lp, kl_gap, kl_over, top1, steps = 0.0, 0.0, 0.0, 0, 0
    for line, a in local.items():
        for x, y in zip(a["steps"], remote[line]["steps"], strict=True):
            lp = max(lp, abs(x["teacher_logprob"] - y["teacher_logprob"]))
            kl_gap += x["reverse_kl"] - y["reverse_kl"]
            kl_over = max(kl_over, y["reverse_kl"] - x["reverse_kl"])
            top1 += x["teacher_top1_id"] == y["teacher_top1_id"]
            steps += 1
    return (
        f"teacher log-prob max |diff| {lp:.3f} nats; same teacher top-1 at {top1 / steps:.1%} of steps; "
        f"reverse KL: exact − estimate {kl_gap / steps:.4f} nats/step on average, "
        f"estimate above exact by at most {kl_over:.3f} (bf16 noise)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--urls", help="comma-separated running vLLM servers (default: start two)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per replica")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    servers = []
    if args.urls:
        urls = [u.strip() for u in args.urls.split(",")]
    else:
        servers = [vllm_server.start(port, log=folder / f"vllm-{port}.log") for port in (8151, 8152)]
        for server in servers:
            vllm_server.wait_ready(server, timeout_s=900)
        urls = [s.url for s in servers]
    try:
        local = Analyzer.from_settings(Settings(database=folder / "local.sqlite3"))
        lines = trajectories(args.n, args.seed, local.pair.student.tokenizer)
        tokens = sum(len(local.prepare(x).ctx.response_ids) for x in lines)
        print(f"{args.n} trajectories, {tokens} response tokens (20-600 each), {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        local_s, local_out = run_job(local, lines, folder, "local")
        print(f"local (fp32, this process)   : {local_s:7.1f} s {tokens / local_s:8.1f} tokens/s")
        for replicas in (1, 2):
            settings = Settings(
                backend="vllm", teacher_urls=urls[:replicas], vllm_concurrency=args.concurrency,
                database=folder / f"vllm{replicas}.sqlite3",
            )  # fmt: skip
            remote = Analyzer.from_settings(settings)
            seconds, out = run_job(remote, lines, folder, f"vllm{replicas}")
            remote.backend.close()
            print(
                f"vLLM, {replicas} replica{'s' if replicas > 1 else ' '} (bf16)   : {seconds:7.1f} s "
                f"{tokens / seconds:8.1f} tokens/s  {local_s / seconds:5.2f}x local"
            )
            print(f"  {compare(local_out, out)}")
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
