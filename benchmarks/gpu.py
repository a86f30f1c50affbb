"""GPU check (issue #29): the embedded SmolLM2-135M-Instruct pair served in bf16 on CUDA, its
numbers checked against a float32 pass of the same weights, and its speed.

1. numbers: a 512-token response replayed in bf16 (fp32 head, `local.head`) and in float32 on
   the same GPU; the largest |Δ log-prob| against the start-up `noise.logprob_bound`, and every
   teacher top-1 difference checked to fall on an `uncertain` step;
2. tokens/s of `engine.replay` (2,048 response tokens), continuations from every prefix (k = 8,
   512 tokens, `share=False`: the worst case), and a padded batch of 16 lines of 128 tokens next
   to two plain forward passes of the same padded shape (the floor);
3. the device-fitted sizes (`local.sizing`) the backend chose from the free memory.

On a machine without CUDA it says so and exits 0. Run from the repository root:
`python benchmarks/gpu.py` (well under 5 minutes on one GPU; a few seconds of it model loading).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

if not torch.cuda.is_available():
    print("benchmarks/gpu.py: no CUDA device here; nothing to measure")
    sys.exit(0)

from vrollout.config import Settings  # noqa: E402
from vrollout.local import engine  # noqa: E402
from vrollout.local.backend import LocalBackend  # noqa: E402
from vrollout.local.continuations import continuations_from_every_prefix  # noqa: E402


def timed(work, repeats: int = 3) -> float:
    """Median seconds of `work()` after one warm-up, synchronised."""
    work()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    bf16 = LocalBackend.from_settings(Settings(device="cuda", dtype="bfloat16"))
    fp32 = LocalBackend.from_settings(Settings(device="cuda", dtype="float32"))
    pair = bf16.pair
    print(f"device {torch.cuda.get_device_name()}; noise {bf16.noise}")
    print(f"sizes fitted to the free memory: {bf16.sizes}")
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(100, 40000, (64,), generator=gen).tolist()
    teacher_context = context + [13, 42, 13]
    response = torch.randint(100, 40000, (512,), generator=gen).tolist()

    # 1. numbers
    got, record = bf16.replay(context, teacher_context, response, top_k=5)
    want, _ = fp32.replay(context, teacher_context, response, top_k=5)
    worst = max(
        abs(a - b)
        for name in ("student_logprob", "teacher_logprob")
        for a, b in zip(getattr(got, name), getattr(want, name), strict=True)
    )
    flips = [
        t for t, (a, b) in enumerate(zip(got.teacher_top1_id, want.teacher_top1_id, strict=True)) if a != b
    ]
    uncertain = record["per_step"]["uncertain"]
    unflagged = [t for t in flips if not uncertain[t]]
    bound = bf16.noise.logprob_bound if bf16.noise else None
    print(
        f"bf16 vs fp32: max |Δ log-prob| {worst:.4f} nats (bound {bound}); top-1 differences {len(flips)}, "
        f"on uncertain steps {len(flips) - len(unflagged)}, uncertain steps {sum(uncertain)}/{len(response)}"
    )
    ok = not unflagged and (bound is None or worst <= bound)

    # 2. speed
    long = torch.randint(100, 40000, (2048,), generator=gen).tolist()
    s = timed(lambda: bf16.replay(context, teacher_context, long, top_k=5))
    print(f"replay: {len(long) / s:,.0f} tokens/s ({s * 1000:.0f} ms for {len(long)} tokens)")
    short = response[:512]
    s = timed(
        lambda: continuations_from_every_prefix(
            pair.teacher, teacher_context, short, 8, vocab_size=pair.vocab_size, share=False
        ),
        repeats=1,
    )
    print(f"continuations (k=8, every prefix): {len(short) / s:,.0f} prefixes/s ({s:.2f} s for {len(short)})")
    lines = [(context, teacher_context, response[i * 8 : i * 8 + 128]) for i in range(16)]
    s = timed(lambda: bf16.replay_batch(lines, top_k=5))
    floor = timed(
        lambda: [
            engine.padded_hidden(m, [c for c, _, _ in lines], [r for _, _, r in lines])
            for m in (pair.student, pair.teacher)
        ]
    )
    tokens = sum(len(r) for _, _, r in lines)
    print(
        f"padded batch of 16 x 128: {tokens / s:,.0f} tokens/s; "
        f"two plain forward passes {tokens / floor:,.0f} tokens/s"
    )
    print("OK" if ok else "FAILED: a bound did not hold")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
