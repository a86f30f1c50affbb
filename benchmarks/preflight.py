"""Preflight: what the noise floor costs on the default model (SmolLM2-135M).

Analyzes the same lines with the noise floor on and off (VROLLOUT_NOISE_FLOOR) and prints the
median wall time of each, the overhead, and the noise floor against the signal. The lines carry
privileged info (without it the analysis's own replay is the noise floor: no extra pass). Two
teachers: the self-teacher (one set of weights: given the student's own ids, its bare pass is
the student's, read from the analysis's replay, so it should cost nothing), and the same weights
loaded as a separate teacher (the bare replay really runs, but only the teacher's pass: the
student's final hidden states are kept from the analysis's replay, so one more pass of one model
plus both heads over the response; it used to be one more pass of both models).
Timings are interleaved medians (the machine is shared and noisy).
Run: .venv/bin/python benchmarks/preflight.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from vrollout.config import Settings
from vrollout.pipeline.analyzer import Analyzer

SOLUTION = "17*23 = 17*20 + 17*3 = 340 + 51 = 391. The answer is 391."
LINES = [
    {"prompt": "What is 17*23?", "response": "17*23 = 17*20 + 17*3 = 340 + 41 = 381. The answer is 381.",
     "privileged": SOLUTION},
    {"prompt": "Name the capital of Australia and say why it was chosen.",
     "response": "The capital of Australia is Sydney, because it is the largest city and the oldest "
                 "settlement, so it was the natural choice when the colonies federated in 1901.",
     "privileged": "Canberra, chosen in 1908 as a compromise between Sydney and Melbourne."},
]  # fmt: skip


def timed_pair(analyzers: dict[bool, Analyzer], line: dict, repeats: int) -> tuple[float, float, dict]:
    """Median seconds with the noise floor off and on, the runs interleaved; the last analysis."""
    times: dict[bool, list[float]] = {False: [], True: []}
    last: dict = {}
    for _ in range(repeats):
        for on in (False, True):
            start = time.perf_counter()
            last = analyzers[on].analyze(line)
            times[on].append(time.perf_counter() - start)
    return statistics.median(times[False]), statistics.median(times[True]), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(database=Path(tmp) / "db.sqlite3")
        self_teacher = Analyzer.from_settings(base).pair
        separate = dataclasses.replace(self_teacher, shared=False)  # the same weights, run apart
        print(
            "| teacher | line | tokens | off (s) | on (s) | overhead | noise floor (nats/token) "
            "| signal (nats/token) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, pair in (("self-teacher", self_teacher), ("separate", separate)):
            analyzers = {
                on: Analyzer(pair, base.model_copy(update={"noise_floor": on})) for on in (False, True)
            }
            for i, line in enumerate(LINES):
                analyzers[True].analyze(line)  # warm up
                off, on, a = timed_pair(analyzers, line, args.repeats)
                floor = a["preflight"]["noise_floor"]
                print(
                    f"| {name} | {i + 1} | {a['summary']['tokens']} | {off:.3f} | {on:.3f} "
                    f"| {100 * (on / off - 1):+.0f}% | {floor['reverse_kl_mean']:.3g} "
                    f"| {floor['signal_reverse_kl_mean']:.3f} |"
                )


if __name__ == "__main__":
    main()
