"""Error localization: what `vrollout localize` costs beyond the replays it needs.

Generated arithmetic lines (examples/make_localization_data.py, seeded) on the default model,
side by side in one run, alternating, each `--repeats` times (the fastest kept):
- the replays alone: the lines as plain analysis requests (the steps joined), through
  `Analyzer.prepare_lines` / `run_prepared`, as `vrollout analyze` runs them;
- the harness: `localization.replay` (the same replays, after checking the lines), then the
  step scores, cross-validated thresholds, metrics and bootstrap intervals, and the folder
  (metrics.json, predictions.jsonl, analyses.jsonl, report.html).
Prints each part and the overhead over the replays alone. Target: under 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from make_localization_data import lines as make_lines  # noqa: E402
from vrollout.cli.localize import replay  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.metrics.localization import localization_line  # noqa: E402
from vrollout.metrics.localization_eval import Setup  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402
from vrollout.report.localization import localization_result, write_folder  # noqa: E402

OPTIONS = {"top_k": None, "recovery": False}


def replays_alone(analyzer: Analyzer, numbered: list) -> float:
    plain = [(n, localization_line(obj)) for n, obj in numbered]  # the same requests, made before timing
    started = time.perf_counter()
    prepared, failed = analyzer.prepare_lines(plain, OPTIONS, None, {})
    assert not failed
    done = sum(len(group) for group in analyzer.run_prepared(prepared))
    assert done == len(numbered)
    return time.perf_counter() - started


def harness(
    analyzer: Analyzer, numbered: list, settings: Settings, out: Path, setup: Setup
) -> dict[str, float]:
    times = {}
    started = time.perf_counter()
    done = replay(analyzer, numbered, OPTIONS, None)
    times["replay"] = time.perf_counter() - started
    assert not done.errors
    started = time.perf_counter()
    result = localization_result([a for _, a in done.analyses], analyzer.pair.student.tokenizer, False, setup)
    times["scores + metrics"] = time.perf_counter() - started
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with (out / "analyses.jsonl").open("w") as f:
        for _, analysis in done.analyses:
            f.write(json.dumps(analysis) + "\n")
    write_folder(out, "bench.jsonl", [], result, analyzer, settings)
    times["folder"] = time.perf_counter() - started
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--per-problem", dest="per_problem", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    settings = Settings(database=folder / "bench.sqlite3")
    analyzer = Analyzer.from_settings(settings)
    rows = make_lines(args.problems, args.per_problem, 0.4, 0, 3, 5)
    numbered = list(enumerate(rows, start=1))
    setup = Setup(folds=5, seed=0, bootstrap=args.bootstrap)
    replays_alone(analyzer, numbered[:4])  # warm-up
    alone, runs = [], []
    for _ in range(args.repeats):
        alone.append(replays_alone(analyzer, numbered))
        runs.append(harness(analyzer, numbered, settings, folder / "out", setup))
    base = min(alone)
    best = min(runs, key=lambda t: sum(t.values()))
    extra = best["scores + metrics"] + best["folder"]
    print(f"{len(rows)} lines, {args.bootstrap} bootstrap resamples, best of {args.repeats}")
    print(f"replays alone:             {base:8.2f} s")
    for name, seconds in best.items():
        print(f"harness: {name:17s} {seconds:8.2f} s")
    print(f"harness total:             {sum(best.values()):8.2f} s")
    print(f"added work (scores, metrics, folder): {extra:.2f} s = {100 * extra / base:.1f}% of the replays")
    print(f"harness total over replays alone: {100 * (sum(best.values()) - base) / base:+.1f}%")


if __name__ == "__main__":
    main()
