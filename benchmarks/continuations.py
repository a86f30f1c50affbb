"""Teacher-continuation benchmark on the embedded SmolLM2-135M-Instruct (the self-teacher, its
context with privileged info, fp32 on CPU, torch's default thread count), in one run.

For k = 8 and a 512-token response it measures `continuations_from_every_prefix` (every prefix's
greedy 8-token continuation) against one plain teacher forward pass over context + response,
`model(ids)` with its logits (the decoder-only pass, without logits, is shown too). Target:
<= k = 8 forward passes. It tries several `branch_chunk` values and lists them fastest first.

Two ways are timed: standalone (the function runs its own teacher-forced pass), and as an
analysis runs it, decoding from the replay's teacher pass (its key/value cache and top-1 ids,
which the replay computes anyway: `replay(keep_teacher_cache=True)`).

Where the response takes the teacher's top-1, the continuation from t is that token and then
the continuation from t+1, so only the divergences are decoded (`share=True`, the default).
The cost therefore depends on how often the teacher agrees with the response; three cases:
- the worst case, `share=False`: every branch decoded, as for a response that leaves the
  teacher at every token (the `branch_chunk` sweep runs this way, as it is about decoding);
- this README as the response (text the model did not write);
- the student's own sample (temperature 1, seed 0, up to 512 tokens): on-policy distillation.

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
from vrollout.config import Settings  # noqa: E402
from vrollout.local.continuations import continuations_from_every_prefix, cut_at_eos, eos_ids  # noqa: E402
from vrollout.local.engine import final_hidden, forced_pass, generate, head_logits  # noqa: E402
from vrollout.models import LoadedModel  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402

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
    analyzer = Analyzer.from_settings(Settings(database="/tmp/bench.sqlite3"))
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

    student_context = analyzer.prepare({"prompt": PROMPT, "response": "-"}).ctx.student_ids
    sampled = generate(pair.student, student_context, max_new_tokens=RESPONSE_TOKENS, temperature=1.0, seed=0)
    sampled_ids = torch.tensor([context + sampled])

    @torch.inference_mode()
    def sampled_pass() -> None:  # the forward pass the student's sample is measured against
        teacher.model(input_ids=sampled_ids, use_cache=False)

    def fast(branch_chunk: int, tokens: int = RESPONSE_TOKENS, share: bool = False) -> list[list[int]]:
        return continuations_from_every_prefix(
            teacher, context, response[:tokens], k=K, vocab_size=vocab, branch_chunk=branch_chunk, share=share
        )

    def replay_pass(resp: list[int]) -> tuple[object, list[int]]:
        """What the replay leaves behind (not timed: the replay's work)."""
        with torch.inference_mode():
            hidden, cache = forced_pass(teacher, context + resp, keep_cache=True)
            return cache, head_logits(teacher, hidden[len(context) - 1 : -1], vocab).argmax(-1).tolist()

    forced = {"readme": replay_pass(response), "sampled": replay_pass(sampled)}

    def from_replay(name: str, resp: list[int], share: bool) -> None:
        results[name] = continuations_from_every_prefix(
            teacher, context, resp, k=K, vocab_size=vocab, forced=forced[name.split("-")[0]], share=share
        )

    decoder_pass()  # warm-up
    full_pass()
    fast(DEFAULT_BRANCH_CHUNK, tokens=64)
    results: dict[int | str, list[list[int]]] = {}

    def run_fast(branch_chunk: int) -> None:
        results[branch_chunk] = fast(branch_chunk)

    replays = {
        "readme-every": (response, False),
        "readme": (response, True),
        "sampled": (sampled, True),
    }
    times: dict[str, list[float]] = {"decoder": [], "full": [], "sampled-full": [], "standalone": []}
    times.update({name: [] for name in replays})
    times.update({f"b{b}": [] for b in BRANCH_CHUNKS})
    for _ in range(REPEATS):  # interleaved: the machine is noisy
        times["decoder"].append(seconds(decoder_pass))
        times["full"].append(seconds(full_pass))
        times["sampled-full"].append(seconds(sampled_pass))
        for name, (resp, share) in replays.items():
            times[name].append(seconds(lambda n=name, r=resp, s=share: from_replay(n, r, s)))
        times["standalone"].append(seconds(lambda: results.__setitem__("standalone", fast(512, share=True))))
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
    agree_replay = {
        name: sum(results[name][t] == cut_at_eos(naive[t], eos) for t in sample)
        for name in ("readme", "readme-every", "standalone")
    }
    sampled_sample = sorted({round(i * (len(sampled) - 1) / (SAMPLE // 4 - 1)) for i in range(SAMPLE // 4)})
    agree_sampled = sum(
        results["sampled"][t] == cut_at_eos(naive_generate(teacher, context + sampled[:t]), eos)
        for t in sampled_sample
    )

    def agreement(name: str, resp: list[int]) -> str:
        top1 = forced[name][1]
        same = sum(a == b for a, b in zip(resp, top1, strict=True))
        return f"teacher's top-1 = response at {same}/{len(resp)} tokens ({same / len(resp):.0%})"

    print(f"{'one teacher forward pass, model(ids) with logits':<46} {forward_s:6.2f} s")
    print(f"{'one teacher decoder pass (no logits)':<46} {median['decoder']:6.2f} s")
    best = min(BRANCH_CHUNKS, key=lambda b: median[f"b{b}"])
    for b in sorted(BRANCH_CHUNKS, key=lambda b: median[f"b{b}"]):
        s = median[f"b{b}"]
        mark = " (default)" if b == DEFAULT_BRANCH_CHUNK else ""
        print(
            f"{'standalone, every branch, branch_chunk=' + str(b) + mark:<46} {s:6.2f} s  "
            f"{s / forward_s:5.2f} forward passes ({s / median['decoder']:.2f} decoder passes), "
            f"{naive_est / s:.0f}x faster than naive"
        )
    rows = [
        ("from the replay pass, every branch (worst case)", "readme-every", forward_s, "", RESPONSE_TOKENS),
        (
            "from the replay pass, shared: this README",
            "readme",
            forward_s,
            agreement("readme", response),
            RESPONSE_TOKENS,
        ),
        (
            "from the replay pass, shared: student's sample",
            "sampled",
            median["sampled-full"],
            agreement("sampled", sampled),
            len(sampled),
        ),
        ("standalone, shared: this README", "standalone", forward_s, "", RESPONSE_TOKENS),
    ]
    for label, name, base, note, tokens in rows:
        s = median[name]
        per_naive = naive_s / len(sample) * tokens
        print(
            f"{label:<46} {s:6.2f} s  {s / base:5.2f} forward passes, {per_naive / s:.0f}x faster than naive"
            + (f"  [{tokens} tokens; {note}]" if note else "")
        )
    print(
        f"{'naive generate, ' + str(len(sample)) + ' sampled prefixes':<46} {naive_s:6.2f} s  "
        f"(extrapolated to all {RESPONSE_TOKENS}: {naive_est:.0f} s)"
    )
    n = len(sample)
    print(
        f"agreement with naive generate: {agree}/{n} prefixes identical (every branch, "
        f"branch_chunk={DEFAULT_BRANCH_CHUNK}), from the replay pass {agree_replay['readme-every']}/{n} "
        f"(every branch) and {agree_replay['readme']}/{n} (shared), standalone shared "
        f"{agree_replay['standalone']}/{n}, student's sample {agree_sampled}/{len(sampled_sample)}; "
        f"{same_across_chunks} of {len(BRANCH_CHUNKS)} branch_chunk values give the default's continuations "
        "at every prefix (a different chunking rounds differently, which can flip a near-tie)"
    )
    worst = median["readme-every"] / forward_s
    typical = median["readme"] / forward_s
    on_policy = median["sampled"] / median["sampled-full"]
    ok = agree == len(sample) and all(v == len(sample) for v in agree_replay.values())
    ok = ok and agree_sampled == len(sampled_sample)
    print(
        f"targets: continuations in an analysis <= k={K} forward passes: this README {typical:.2f} "
        f"{'PASS' if typical <= K else 'FAIL'}, student's sample {on_policy:.2f} "
        f"{'PASS' if on_policy <= K else 'FAIL'}, worst case {worst:.2f} {'PASS' if worst <= K else 'FAIL'}; "
        f"agreement {'PASS' if ok else 'FAIL'}; fastest branch_chunk={best}  "
        f"({time.perf_counter() - began:.0f} s, load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
