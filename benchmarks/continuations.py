"""Teacher-continuation benchmark on the embedded SmolLM2-135M-Instruct (the self-teacher, its
context with privileged info, fp32 on CPU, torch's default thread count), in one run.

For k = 8 and a 512-token response it measures `continuations_from_every_prefix` (every prefix's
greedy 8-token continuation) against one plain teacher forward pass over context + response,
`model(ids)` with its logits (the decoder-only pass, without logits, is shown too). Target:
<= k = 8 forward passes. It tries several `branch_chunk` values and lists them fastest first.

Two ways are timed: standalone (the function runs its own teacher-forced pass), and as an
analysis runs it, decoding from the replay's teacher pass (its key/value cache and top-1 ids,
which the replay computes anyway: `replay(keep_teacher_cache=True)`).

The naive way, one Hugging Face `generate(max_new_tokens=8, do_sample=False)` per prefix, would
take minutes for all 512 prefixes: it runs on 32 evenly spaced prefixes, is extrapolated to 512,
and gives the speed-up. On those prefixes the fast continuations must equal the naive ones token
for token (both end after the first EOS).

Run from the repository root: `python benchmarks/continuations.py` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.config import Settings  # noqa: E402
from app.continuations import continuations_from_every_prefix, cut_at_eos, eos_ids  # noqa: E402
from app.engine import final_hidden, forced_pass, generate, head_logits  # noqa: E402
from app.models import LoadedModel  # noqa: E402
from app.service import Analyzer  # noqa: E402

K = 8
RESPONSE_TOKENS = 512
SAMPLE = 32  # prefixes run through naive `generate`
BRANCH_CHUNKS = (128, 256, 512, 1024)
DEFAULT_BRANCH_CHUNK = 512  # continuations_from_every_prefix's default
REPEATS = 3

PROMPT = "Summarise the documentation of this project."
PRIVILEGED = "It replays a student's trajectory through a teacher and shows the teacher's top-1 tokens."


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive_generate(model: LoadedModel, prefix: list[int]) -> list[int]:
    """Hugging Face greedy generation of K tokens after `prefix` (stops at EOS), as the app's
    student generation does it."""
    return generate(model, prefix, max_new_tokens=K, temperature=0.0)


def main() -> None:
    began = time.perf_counter()
    analyzer = Analyzer.from_settings(Settings(database="/tmp/bench.sqlite3"), store=False)
    pair = analyzer.pair
    teacher, vocab = pair.teacher, pair.vocab_size
    context = analyzer.prepare({"prompt": PROMPT, "response": "-", "privileged": PRIVILEGED}).ctx.teacher_ids
    text = (ROOT / "README.md").read_text()
    response = teacher.tokenizer(text, add_special_tokens=False)["input_ids"][:RESPONSE_TOKENS]
    assert len(response) == RESPONSE_TOKENS
    print(
        f"SmolLM2-135M-Instruct fp32 teacher, {torch.get_num_threads()} threads, k={K}, "
        f"{RESPONSE_TOKENS}-token response, teacher context {len(context)} tokens, "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    ids = torch.tensor([context + response])

    @torch.inference_mode()
    def decoder_pass() -> None:
        final_hidden(teacher, context + response)

    @torch.inference_mode()
    def full_pass() -> None:
        teacher.model(input_ids=ids, use_cache=False)

    def fast(branch_chunk: int, tokens: int = RESPONSE_TOKENS) -> list[list[int]]:
        return continuations_from_every_prefix(
            teacher, context, response[:tokens], k=K, vocab_size=vocab, branch_chunk=branch_chunk
        )

    with torch.inference_mode():  # what the replay leaves behind (not timed: the replay's work)
        hidden, cache = forced_pass(teacher, context + response, keep_cache=True)
        top1 = head_logits(teacher, hidden[len(context) - 1 : -1], vocab).argmax(-1).tolist()

    def from_replay() -> None:
        results["replay"] = continuations_from_every_prefix(
            teacher, context, response, k=K, vocab_size=vocab, forced=(cache, top1)
        )

    decoder_pass()  # warm-up
    full_pass()
    fast(DEFAULT_BRANCH_CHUNK, tokens=64)
    results: dict[int | str, list[list[int]]] = {}

    def run_fast(branch_chunk: int) -> None:
        results[branch_chunk] = fast(branch_chunk)

    times: dict[str, list[float]] = {"decoder": [], "full": [], "replay": []}
    times.update({f"b{b}": [] for b in BRANCH_CHUNKS})
    for _ in range(REPEATS):  # interleaved: the machine is noisy
        times["decoder"].append(seconds(decoder_pass))
        times["full"].append(seconds(full_pass))
        times["replay"].append(seconds(from_replay))
        for b in BRANCH_CHUNKS:
            times[f"b{b}"].append(seconds(lambda b=b: run_fast(b)))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    forward_s = median["full"]

    sample = sorted({round(i * (RESPONSE_TOKENS - 1) / (SAMPLE - 1)) for i in range(SAMPLE)})
    eos = eos_ids(teacher)
    naive: dict[int, list[int]] = {}

    def run_naive() -> None:
        for t in sample:
            naive[t] = naive_generate(teacher, context + response[:t])

    naive_s = seconds(run_naive)
    naive_est = naive_s / len(sample) * RESPONSE_TOKENS
    default = results[DEFAULT_BRANCH_CHUNK]
    agree = sum(default[t] == cut_at_eos(naive[t], eos) for t in sample)
    same_across_chunks = sum(results[b] == default for b in BRANCH_CHUNKS)
    agree_replay = sum(results["replay"][t] == cut_at_eos(naive[t], eos) for t in sample)

    print(f"{'one teacher forward pass, model(ids) with logits':<46} {forward_s:6.2f} s")
    print(f"{'one teacher decoder pass (no logits)':<46} {median['decoder']:6.2f} s")
    best = min(BRANCH_CHUNKS, key=lambda b: median[f"b{b}"])
    for b in sorted(BRANCH_CHUNKS, key=lambda b: median[f"b{b}"]):
        s = median[f"b{b}"]
        mark = " (default)" if b == DEFAULT_BRANCH_CHUNK else ""
        print(
            f"{'continuations, branch_chunk=' + str(b) + mark:<46} {s:6.2f} s  "
            f"{s / forward_s:5.2f} forward passes ({s / median['decoder']:.2f} decoder passes), "
            f"{naive_est / s:.0f}x faster than naive"
        )
    s = median["replay"]
    print(
        f"{'continuations from the replay pass (default)':<46} {s:6.2f} s  "
        f"{s / forward_s:5.2f} forward passes ({s / median['decoder']:.2f} decoder passes), "
        f"{naive_est / s:.0f}x faster than naive"
    )
    print(
        f"{'naive generate, ' + str(len(sample)) + ' sampled prefixes':<46} {naive_s:6.2f} s  "
        f"(extrapolated to all {RESPONSE_TOKENS}: {naive_est:.0f} s)"
    )
    print(
        f"agreement with naive generate on the sample: {agree}/{len(sample)} prefixes identical "
        f"standalone, {agree_replay}/{len(sample)} from the replay pass; {same_across_chunks} of "
        f"{len(BRANCH_CHUNKS)} branch_chunk values give the default's continuations at every prefix "
        "(a different chunking rounds differently, which can flip a near-tie)"
    )
    ratio = median["replay"] / forward_s
    standalone = median[f"b{DEFAULT_BRANCH_CHUNK}"] / forward_s
    ok = agree == agree_replay == len(sample)
    print(
        f"targets: continuations in an analysis {ratio:.2f} forward passes <= k={K} "
        f"{'PASS' if ratio <= K else 'FAIL'} (standalone {standalone:.2f}); agreement "
        f"{'PASS' if ok else 'FAIL'}; fastest branch_chunk={best}  "
        f"({time.perf_counter() - began:.0f} s, load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
