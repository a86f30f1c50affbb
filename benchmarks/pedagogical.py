"""Pedagogical rollout benchmark on the embedded SmolLM2-135M-Instruct (student = self-teacher
with privileged info, so the two contexts differ), fp32 on this machine's CPU with torch's
default thread count, everything side by side in one run.

1. What OPD pays for a prompt: the student's own generation of N = 256 tokens (`engine.generate`,
   Hugging Face `generate` with its KV cache, greedy) plus one teacher forward pass over the
   teacher's context + that response, `model(ids)` with its logits.
2. One pedagogical rollout of N tokens (`pedagogical_rollout`, greedy, threshold 0.05): the
   self-teacher's student and teacher rows go through one forward pass per step. Target:
   <= 1.5x (1).
3. The same rollout with one forward pass per model per step (the pair marked as not sharing
   weights; what a separate teacher costs, and how the rollout ran before it was batched).
4. Batched rollouts (`pedagogical_rollouts`, sampled at temperature 1 with seeds 0..B-1, 64
   tokens each at most) for B = 1, 2, 4, 8, 16: decoded tokens per second against one by one,
   and whether every batched rollout equals its one-by-one run token for token.

Forcing N tokens: the prompt asks for a long essay, so that the greedy student runs past N
without an end-of-sequence token on both sides; the run checks it and prints the lengths (no
EOS is suppressed, nothing is changed in the models). Timings are medians of a few repeats,
interleaved (the machine is shared and noisy); the load average is printed.
Run from the repository root: `python benchmarks/pedagogical.py` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.local.engine import generate  # noqa: E402
from vrollout.local.pedagogical import Policy, RolloutItem, pedagogical_rollout, pedagogical_rollouts  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402

PROMPT = "Write a long, detailed essay about the history of the Roman Empire, from its founding to its fall."
PRIVILEGED = "The essay must mention Augustus, Constantine and the year 476."
BATCHES = (1, 2, 4, 8, 16)
BATCH_TOKENS = 64


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="*", default=list(BATCHES))
    parser.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS)
    args = parser.parse_args()
    began = time.perf_counter()
    analyzer = Analyzer.from_settings(Settings(database="/tmp/bench-pedagogical.sqlite3"))
    pair = analyzer.pair
    ctx = analyzer.prepare({"prompt": PROMPT, "response": "-", "privileged": PRIVILEGED}).ctx
    s_ctx, t_ctx = ctx.student_ids, ctx.teacher_ids
    unbatched = dataclasses.replace(pair, shared=False)  # same weights, one pass per model per step
    policy = Policy(threshold=0.05, max_new_tokens=args.tokens)
    print(
        f"SmolLM2-135M-Instruct fp32 self-teacher, {torch.get_num_threads()} threads, {args.tokens} tokens, "
        f"contexts {len(s_ctx)} / {len(t_ctx)} tokens, load average {os.getloadavg()[0]:.1f}"
    )

    runs: dict[str, object] = {}

    def opd() -> None:
        response = generate(pair.student, s_ctx, max_new_tokens=args.tokens)
        with torch.inference_mode():
            pair.teacher.model(input_ids=torch.tensor([t_ctx + response]))
        runs["opd"] = response

    def one(name: str, which: object) -> Callable[[], None]:
        return lambda: runs.__setitem__(name, pedagogical_rollout(which, s_ctx, t_ctx, policy))  # type: ignore[arg-type]

    timed = {"opd": opd, "rollout": one("rollout", pair), "unbatched": one("unbatched", unbatched)}
    generate(pair.student, s_ctx, max_new_tokens=8)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeats):  # interleaved: the machine is noisy
        for name, fn in timed.items():
            times[name].append(seconds(fn))
            print(f"  {name}: {times[name][-1]:.2f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    lengths = {"opd": len(runs["opd"])} | {n: len(runs[n]["response_ids"]) for n in ("rollout", "unbatched")}  # type: ignore[index]
    same = runs["rollout"]["response_ids"] == runs["unbatched"]["response_ids"]  # type: ignore[index]
    base = median["opd"]
    print(f"{'OPD: student generate + one teacher pass':<48} {base:7.2f} s  [{lengths['opd']} tokens]")
    for name, label in (
        ("rollout", "pedagogical rollout (one pass per step)"),
        ("unbatched", "pedagogical rollout, one pass per model"),
    ):
        run = runs[name]
        print(
            f"{label:<48} {median[name]:7.2f} s  {median[name] / base:5.2f}x OPD  "
            f"[{lengths[name]} tokens, {run['num_interventions']} interventions]"  # type: ignore[index]
        )
    forced = all(n == args.tokens for n in lengths.values())
    print(f"all three ran {args.tokens} tokens: {forced}; batched and unbatched rollouts identical: {same}")

    # Batched rollouts: tokens per second against one by one (B = 1).
    items = [
        RolloutItem(
            s_ctx, t_ctx, Policy(threshold=0.05, temperature=1.0, max_new_tokens=args.batch_tokens, seed=i)
        )
        for i in range(max(args.batches))
    ]
    alone = pedagogical_rollouts(pair, items[:1])
    rates: dict[int, float] = {}
    identical = True
    for b in args.batches:
        spent, tokens = [], 0
        for _ in range(max(1, args.repeats - 1)):
            start = time.perf_counter()
            out = pedagogical_rollouts(pair, items[:b])
            spent.append(time.perf_counter() - start)
            tokens = sum(len(r["response_ids"]) for r in out)
        rates[b] = tokens / statistics.median(spent)
        print(f"  batch of {b}: {tokens} tokens in {statistics.median(spent):.2f} s", flush=True)
        identical &= out[0]["response_ids"] == alone[0]["response_ids"]
    for item, got in list(zip(items, out, strict=False))[-2:]:  # the largest batch's last two, alone
        solo = pedagogical_rollout(pair, item.student_context, item.teacher_context, item.policy)
        identical &= got["response_ids"] == solo["response_ids"]
    for b, rate in rates.items():
        label = f"batch of {b} rollouts"
        print(f"{label:<48} {rate:7.1f} tokens/s  {rate / rates[min(rates)]:5.2f}x one by one")
    ratio = median["rollout"] / base
    print(
        f"target: one rollout <= 1.5x OPD: {ratio:.2f} {'PASS' if ratio <= 1.5 else 'FAIL'}; "
        f"batched rollouts identical to one by one: {'PASS' if identical else 'FAIL'}  "
        f"({time.perf_counter() - began:.0f} s, load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
