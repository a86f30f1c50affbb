"""Replay engine benchmark on the embedded SmolLM2-135M-Instruct (student = self-teacher with
privileged info, so the two contexts differ and both forward passes are real), on this machine's
CPU with torch's default thread count. Everything is measured side by side in one run.

1. floor: one decoder-only forward pass per model over context + response (1,024 response
   tokens), the same pass the engine makes, without the (L, V) logits;
2. `engine.replay` (top_k=5, Settings().chunk_size) on the same inputs. Target: <= 1.3x the floor;
3. the naive per-prefix reference (`reference.naive_replay`: two full forward passes per step)
   against the engine on a 64-token response: the speed-up;
4. peak memory for a 4,096-token response, each in a fresh subprocess (ru_maxrss): (a) forward
   passes only, (b) forward passes + the full replay. Target: (b) - (a) < 10% of the bytes that
   float32 logits for the whole response would take for both models (2 * T * V * 4). The replay
   reuses memory the forward passes freed, so (b) - (a) is about 0; the working set of the chunk
   loop (two chunks of logits + step_stats' buffers) is printed too, computed, not measured.

Timings are medians of a few repeats, floor and replay interleaved (the machine is noisy).
Run from the repository root: `python benchmarks/replay.py` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.local.engine import final_hidden, replay  # noqa: E402
from vrollout.local.metrics import BLOCK_ROWS  # noqa: E402
from vrollout.local.reference import naive_replay  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402

FLOOR_TOKENS = 1024
NAIVE_TOKENS = 64
MEMORY_TOKENS = 4096
REPEATS = 5
TOP_K = 5
TARGET_RATIO = 1.3
TARGET_MEMORY_SHARE = 0.10

PROMPT = "Summarise the documentation and the code of this project."
PRIVILEGED = "It replays a student's trajectory through a teacher and shows the teacher's top-1 tokens."


def load() -> tuple[Analyzer, list[int], list[int], list[int]]:
    """The analyzer, both contexts (teacher with privileged info) and a long response's ids."""
    analyzer = Analyzer.from_settings(Settings(database="/tmp/bench.sqlite3"))
    ctx = analyzer.prepare({"prompt": PROMPT, "response": "-", "privileged": PRIVILEGED}).ctx
    text = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "app").rglob("*.py"))])
    response = analyzer.pair.student.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(response) >= MEMORY_TOKENS, len(response)
    return analyzer, ctx.student_ids, ctx.teacher_ids, response


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn `repeats` times after one warm-up round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def child(mode: str) -> None:
    """In a fresh process: peak RSS after forward passes only, or forward passes + replay."""
    analyzer, s_ctx, t_ctx, response = load()
    pair, response = analyzer.pair, response[:MEMORY_TOKENS]
    with torch.inference_mode():
        final_hidden(pair.student, s_ctx + response)
        final_hidden(pair.teacher, t_ctx + response)
    if mode == "replay":
        replay(pair, s_ctx, t_ctx, response, top_k=TOP_K, chunk_size=analyzer.settings.chunk_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"peak": peak, "vocab": pair.vocab_size}))


def peak_bytes(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return row["peak"], row["vocab"]


def main() -> None:
    began = time.perf_counter()
    analyzer, s_ctx, t_ctx, long_response = load()
    pair, chunk = analyzer.pair, analyzer.settings.chunk_size
    print(
        f"SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} threads, vocab {pair.vocab_size}, "
        f"chunk_size {chunk}, contexts {len(s_ctx)} (student) / {len(t_ctx)} (teacher) tokens, "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    response = long_response[:FLOOR_TOKENS]

    @torch.inference_mode()
    def floor() -> None:
        final_hidden(pair.student, s_ctx + response)
        final_hidden(pair.teacher, t_ctx + response)

    t = side_by_side(
        {
            "floor": floor,
            "replay": lambda: replay(pair, s_ctx, t_ctx, response, top_k=TOP_K, chunk_size=chunk),
        },
        REPEATS,
    )
    ratio = t["replay"] / t["floor"]

    short = long_response[:NAIVE_TOKENS]
    naive_s = seconds(lambda: naive_replay(pair, s_ctx, t_ctx, short, top_k=TOP_K))
    engine_s = side_by_side(
        {"engine": lambda: replay(pair, s_ctx, t_ctx, short, top_k=TOP_K, chunk_size=chunk)}, REPEATS
    )["engine"]

    forward_peak, vocab = peak_bytes("forward")
    replay_peak, _ = peak_bytes("replay")
    extra = replay_peak - forward_peak
    full_logits = 2 * MEMORY_TOKENS * vocab * 4
    share = extra / full_logits
    working_set = (2 * chunk + 4 * BLOCK_ROWS) * vocab * 4  # two chunks of logits + step_stats' buffers

    mib = 2**20
    rows = [
        ("1. floor: decoder passes, 2 models", f"{FLOOR_TOKENS} tok", f"{t['floor']:.2f} s", ""),
        ("2. replay (top_k=5)", f"{FLOOR_TOKENS} tok", f"{t['replay']:.2f} s", f"{ratio:.2f}x floor"),
        ("   head + metrics (replay - floor)", "", f"{t['replay'] - t['floor']:.2f} s", ""),
        ("3. naive per-prefix replay (1 run)", f"{NAIVE_TOKENS} tok", f"{naive_s:.2f} s", ""),
        ("   engine replay", f"{NAIVE_TOKENS} tok", f"{engine_s:.3f} s", f"{naive_s / engine_s:.0f}x faster"),
        ("4. peak RSS: forward passes only", f"{MEMORY_TOKENS} tok", f"{forward_peak / mib:.0f} MiB", ""),
        ("   peak RSS: forward + replay", f"{MEMORY_TOKENS} tok", f"{replay_peak / mib:.0f} MiB", ""),
        ("   extra for replay", "", f"{extra / mib:.0f} MiB", f"{share:.1%} of full logits"),
        ("   full fp32 logits, 2 models", f"{MEMORY_TOKENS} tok", f"{full_logits / mib:.0f} MiB", ""),
        (
            "   by construction: chunk logits+buffers",
            "",
            f"{working_set / mib:.0f} MiB",
            f"{working_set / full_logits:.1%} of full logits (not measured)",
        ),
    ]
    for row in rows:
        print(f"{row[0]:<38} {row[1]:>9} {row[2]:>10}  {row[3]}")
    speed_ok, memory_ok = ratio <= TARGET_RATIO, share < TARGET_MEMORY_SHARE
    print(
        f"targets: replay {ratio:.2f}x floor <= {TARGET_RATIO}x {'PASS' if speed_ok else 'FAIL'}; "
        f"replay memory {share:.1%} of full logits < {TARGET_MEMORY_SHARE:.0%} "
        f"{'PASS' if memory_ok else 'FAIL'}  ({time.perf_counter() - began:.0f} s, "
        f"load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main()
