"""Preflight: what the noise floor costs on the default model (SmolLM2-135M, self-teacher).

Analyzes the same lines with the noise floor on and off (VROLLOUT_NOISE_FLOOR) and prints the
median wall time of each, the overhead, and the noise floor against the signal. The lines carry
privileged info (without it the analysis's own replay is the noise floor: no extra pass).
Run: .venv/bin/python benchmarks/preflight.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vrollout.config import Settings
from vrollout.service import Analyzer

SOLUTION = "17*23 = 17*20 + 17*3 = 340 + 51 = 391. The answer is 391."
LINES = [
    {"prompt": "What is 17*23?", "response": "17*23 = 17*20 + 17*3 = 340 + 41 = 381. The answer is 381.",
     "privileged": SOLUTION},
    {"prompt": "Name the capital of Australia and say why it was chosen.",
     "response": "The capital of Australia is Sydney, because it is the largest city and the oldest "
                 "settlement, so it was the natural choice when the colonies federated in 1901.",
     "privileged": "Canberra, chosen in 1908 as a compromise between Sydney and Melbourne."},
]  # fmt: skip


def timed(analyzer: Analyzer, line: dict, repeats: int) -> tuple[float, dict]:
    times, last = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        last = analyzer.analyze(line)
        times.append(time.perf_counter() - start)
    return statistics.median(times), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(database=Path(tmp) / "db.sqlite3")
        analyzers = {on: Analyzer.from_settings(base.model_copy(update={"noise_floor": on}), store=False)
                     for on in (False, True)}  # fmt: skip
        print(
            "| line | tokens | off (s) | on (s) | overhead | noise floor (nats/token) | signal (nats/token) |"
        )
        print("|---|---|---|---|---|---|---|")
        for i, line in enumerate(LINES):
            analyzers[True].analyze(line)  # warm up
            off, _ = timed(analyzers[False], line, args.repeats)
            on, a = timed(analyzers[True], line, args.repeats)
            floor = a["preflight"]["noise_floor"]
            print(
                f"| {i + 1} | {a['summary']['tokens']} | {off:.3f} | {on:.3f} | {100 * (on / off - 1):+.0f}% "
                f"| {floor['reverse_kl_mean']:.3g} | {floor['signal_reverse_kl_mean']:.3f} |"
            )


if __name__ == "__main__":
    main()
