"""--ray on this machine: its overhead, its speed-up with 2 workers, and the driver's memory.

Saves the tiny test model (tests/support/tiny.py) to a temporary folder, writes JSONL files of
short trajectories and runs `vrollout analyze FILE --out DIR --student TINY --no-store` in a fresh
child each time (CPU, fp32):

- plain, then `--ray local --workers 1`, then `--ray local --workers 2`, on `--lines` lines
  (default 200; the issue's target is measured on 1,000: at most 1.15x for one worker);
- the driver's own peak RSS (`ru_maxrss` of the child, which is the driver: Ray's workers are
  processes of their own) with `--ray local --workers 1` on `--lines` and 4x as many lines: flat
  when the driver streams (target: at most 1.10x).

Wall times include starting Ray (a few seconds) and each worker loading the model: the overhead
shrinks as the file grows. Prints one line per run and the ratios.

    .venv/bin/python benchmarks/ray_scale.py [--lines 200] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRIVER = """
import resource, sys
from vrollout.cli.commands import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def save_tiny(folder: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from support.tiny import tiny_pair

    pair = tiny_pair()
    pair.student.model.save_pretrained(folder)
    pair.student.tokenizer.save_pretrained(folder)


def write_lines(path: Path, count: int) -> Path:
    with path.open("w") as f:
        for i in range(count):
            line = {
                "id": f"t{i}",
                "prompt": f"What is {i}+{i}?",
                "response": f"It is {2 * i + i % 3}, I think.",
            }
            f.write(json.dumps(line) + "\n")
    return path


def run(model: Path, source: Path, out: Path, *extra: str) -> tuple[float, int]:
    """Wall seconds and the driver's peak RSS (KB) of one `vrollout analyze`."""
    argv = [sys.executable, "-c", DRIVER, "analyze", str(source), "--out", str(out), "--student", str(model),
            "--device", "cpu", "--dtype", "float32", "--no-store", *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"}
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(extra)}\n{done.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        save_tiny(tmp / "model")
        small = write_lines(tmp / "small.jsonl", args.lines)
        large = write_lines(tmp / "large.jsonl", 4 * args.lines)
        ray = ["--ray", "local", "--batch-size", str(args.batch_size)]
        plain, _ = run(tmp / "model", small, tmp / "plain")
        print(f"plain                      {args.lines:>6} lines  {plain:6.1f} s")
        one, peak_small = run(tmp / "model", small, tmp / "one", *ray, "--workers", "1")
        driver = f"driver {peak_small / 1024:.0f} MB"
        print(f"--ray local --workers 1    {args.lines:>6} lines  {one:6.1f} s  {driver}")
        two, _ = run(tmp / "model", small, tmp / "two", *ray, "--workers", "2")
        print(f"--ray local --workers 2    {args.lines:>6} lines  {two:6.1f} s")
        _, peak_large = run(tmp / "model", large, tmp / "large", *ray, "--workers", "1")
        print(f"--ray local --workers 1    {4 * args.lines:>6} lines  driver {peak_large / 1024:.0f} MB")
        print(f"overhead of one worker: {one / plain:.2f}x (target at most 1.15x on 1,000 lines)")
        print(f"speed-up of two workers over one: {one / two:.2f}x ({os.cpu_count()} CPUs here)")
        growth = peak_large / peak_small
        print(f"driver peak RSS, {4 * args.lines} over {args.lines} lines: {growth:.2f}x (target 1.10x)")


if __name__ == "__main__":
    main()
