"""Batch jobs: throughput of the job runner (padded batches) against one-by-one analysis.

The same trajectories (mixed lengths, 20 to 600 response tokens, seeded) go through
`JobRunner.run_job` on a temporary database, and through `Analyzer.run` one at a time stored
the same way, in one run, on the default model. Prints tokens per second for both, the
speed-up, and the largest difference between the two sets of numbers. Target: >= 1.5x with
identical numbers (float tolerance).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vrollout.config import Settings  # noqa: E402
from vrollout.jobs.runner import JobRunner  # noqa: E402
from vrollout.jobs.worker import ModelWorker  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402
from vrollout.storage.jobs import Jobs  # noqa: E402
from vrollout.storage.store import Store  # noqa: E402

WORDS = ["the", "student", "multiplies", "seventeen", "by", "twenty", "three", "and", "carries", "one"]


def trajectories(n: int, seed: int, tokenizer) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = rng.randint(20, 600)
        text = " ".join(rng.choice(WORDS) for _ in range(target))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:target]
        prompt = f"Question {i}: what is 17*23?"
        out.append(
            {"id": f"t{i}", "prompt": prompt, "response": tokenizer.decode(ids), "privileged": "17*23 = 391"}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    settings = Settings(database=folder / "batch.sqlite3")
    analyzer = Analyzer.from_settings(settings)
    lines = trajectories(args.n, args.seed, analyzer.pair.student.tokenizer)
    tokens = sum(len(analyzer.prepare(x).ctx.response_ids) for x in lines)

    store = Store(folder / "single.sqlite3")
    started = time.perf_counter()
    single, line_s = [], []
    for line in lines:  # validation included, as in the job runner
        began = time.perf_counter()
        analysis = analyzer.run(analyzer.prepare(line), store=False)
        store.save(analysis)
        single.append(analysis)
        line_s.append(time.perf_counter() - began)
    single_s = time.perf_counter() - started

    jobs = Jobs(Store(settings.database))
    job_id = jobs.create("bench", {}, list(enumerate(lines, start=1)), [])
    runner = JobRunner(jobs, analyzer, ModelWorker())
    started = time.perf_counter()
    asyncio.run(runner.run_job(job_id))
    batch_s = time.perf_counter() - started
    batched = {a["job"]["line"]: a for a in jobs.analyses(job_id)}

    diff = max(
        abs(x["reverse_kl"] - y["reverse_kl"]) + abs(x["teacher_logprob"] - y["teacher_logprob"])
        for i, a in enumerate(single, start=1)
        for x, y in zip(a["steps"], batched[i]["steps"], strict=True)
    )
    same_top1 = all(
        [s["teacher_top1_id"] for s in a["steps"]] == [s["teacher_top1_id"] for s in batched[i]["steps"]]
        for i, a in enumerate(single, start=1)
    )
    print(f"{args.n} trajectories, {tokens} response tokens (20-600 each), {os.cpu_count()} CPUs")
    print(f"one by one : {single_s:7.1f} s  {tokens / single_s:7.1f} tokens/s")
    rate = tokens / batch_s
    limits = f"batch_tokens={settings.batch_tokens}, batch_max_sequence={settings.batch_max_sequence}"
    print(f"job runner : {batch_s:7.1f} s  {rate:7.1f} tokens/s  ({limits})")
    print(f"speed-up   : {single_s / batch_s:.2f}x (target >= 1.5x)")
    print(f"numbers    : max |difference| {diff:.2e} nats; teacher top-1 identical: {same_top1}")
    ceiling(single, line_s, single_s, tokens)


def ceiling(single: list[dict], line_s: list[float], single_s: float, tokens: int) -> None:
    """The most any scheduling could gain: one-by-one throughput by response length, and the
    speed-up if every token ran at the best of those rates."""
    buckets: dict[int, list[tuple[int, float]]] = {}
    for analysis, s in zip(single, line_s, strict=True):
        n = analysis["summary"]["tokens"]
        buckets.setdefault(min(n // 100, 5), []).append((n, s))
    print("one by one, by response length:")
    rates = []
    for b in sorted(buckets):
        n = sum(x for x, _ in buckets[b])
        s = sum(y for _, y in buckets[b])
        rates.append(n / s)
        print(f"  {b * 100:>3}-{b * 100 + 99:<3} tokens: {len(buckets[b]):3} lines  {n / s:7.1f} tokens/s")
    best = max(rates)
    print(
        f"ceiling    : {single_s / (tokens / best):.2f}x if every token ran at the best one-by-one rate "
        f"({best:.1f} tokens/s)"
    )


if __name__ == "__main__":
    main()
