"""The distillation objectives' overhead (#26, docs/objectives.md): the same analysis with every
objective (the default), with only the sampled-token ones (k1, k3: no vocabulary pass) and with
none (`objectives: []`), side by side in one run, on the tiny test model (tests/support/tiny.py)
and on the default model (SmolLM2-135M-Instruct as a self-teacher with privileged info, from the
converted cache that `make run` fills; skipped with a note when it is not there).

The vocabulary-wide objectives are computed in the replay's chunk loop (one more pass over the
vocabulary for the JSD, one for the tail masses), so their cost is a share of the replay's. Each
configuration runs `--repeats` times interleaved (the machine is noisy); the medians and the
ratios to "none" are printed. CPU, fp32, no recovery or continuations, nothing stored.

    .venv/bin/python benchmarks/objectives.py [--tokens 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from vrollout.config import Settings  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402
from vrollout.schema.analysis import OBJECTIVE_NAMES  # noqa: E402

TARGET = 1.10  # the target: under 10% over the analysis without them
CONFIGS: dict[str, list[str] | None] = {"none": [], "k1,k3": ["k1", "k3"], "all": None}
CACHE = Path.home() / ".cache" / "vrollout"
WORDS = "the student writes an answer and the teacher reads every prefix of it once"


def response(tokens: int) -> str:
    """About `tokens` tokens of plain English (the tokenizers make roughly a token a word)."""
    words = WORDS.split()
    return " ".join(words[i % len(words)] for i in range(tokens))


def time_configs(analyzer: Analyzer, tokens: int, repeats: int) -> dict[str, list[float]]:
    base = {
        "prompt": "Explain how distillation works.",
        "response": response(tokens),
        "privileged": "Be brief.",
    }
    base["noise_floor"] = False
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for objectives in CONFIGS.values():  # warm-up: one of each, untimed
        analyzer.analyze({**base, **({} if objectives is None else {"objectives": objectives})})
    for _ in range(repeats):
        for name, objectives in CONFIGS.items():
            line: dict[str, Any] = {**base, **({} if objectives is None else {"objectives": objectives})}
            start = time.perf_counter()
            analysis = analyzer.analyze(line)
            times[name].append(time.perf_counter() - start)
            assert len(analysis["summary"].get("objectives") or {}) == (
                len(OBJECTIVE_NAMES) if objectives is None else len(objectives)
            )
    return times


def report(label: str, analysis_tokens: int, times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{label}: {analysis_tokens} response tokens, median of {len(times['none'])}")
    for name, median in medians.items():
        ratio = median / medians["none"]
        runs = [round(t, 3) for t in times[name]]
        print(f"  objectives {name:6s} {median:8.3f} s   {ratio:5.3f}x none   runs {runs}")
    verdict = "meets" if medians["all"] / medians["none"] <= TARGET else "misses"
    print(f"  all vs none: {medians['all'] / medians['none']:.3f}x ({verdict} the target {TARGET:.2f}x)")


def tokens_of(analyzer: Analyzer, tokens: int) -> int:
    return analyzer.analyze(
        {"prompt": "x", "response": response(tokens), "objectives": [], "noise_floor": False}
    )["summary"]["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="response length (words, about tokens)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny-only", action="store_true", help="skip the default model")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    from support.tiny import tiny_pair

    tiny = Analyzer(tiny_pair(), Settings())
    report("tiny model", tokens_of(tiny, args.tokens), time_configs(tiny, args.tokens, args.repeats))

    if args.tiny_only:
        return
    if not CACHE.is_dir() or not any(CACHE.iterdir()):
        print(f"default model: skipped, no converted copy in {CACHE} (run `make run` once)")
        return
    default = Analyzer.from_settings(Settings(cache_dir=CACHE, noise_floor=False))
    report(
        f"default model ({default.pair.student.name}, self-teacher)",
        tokens_of(default, args.tokens),
        time_configs(default, args.tokens, args.repeats),
    )


if __name__ == "__main__":
    main()
