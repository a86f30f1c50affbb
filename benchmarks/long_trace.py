"""A long reasoning trace analysed end to end in bounded memory (#25): 2,000, 8,000 and 32,000
response tokens through the real pipeline (`Analyzer.analyze`, every metric, the digest), on the
tiny random test model given a long context (tests/support/tiny.py; its vocabulary is small, so
what grows with the length is the pipeline's own memory, not the logits).

Each size runs in its own process, one after the other, and prints the wall time, the process's
peak resident memory above what it held once the model was loaded (`ru_maxrss`), and the
analysis's JSON size. Bounded means: the peak grows with the length as the analysis itself does
(its steps), not with its square, and stays a small multiple of the stored JSON.

    .venv/bin/python benchmarks/long_trace.py [--sizes 2000 8000 32000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTION = "Think step by step: what is 17*23?"
sys.path.insert(0, str(HERE.parent / "tests"))  # support.tiny: the tiny test pair


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(size: int) -> dict[str, float]:
    """Analyse one trace of `size` response tokens in this process."""
    import tempfile

    from support.tiny import tiny_pair
    from vrollout.config import Settings
    from vrollout.pipeline.analyzer import Analyzer

    pair = tiny_pair()
    pair.student.model.config.max_position_embeddings = size + 256  # a model whose context allows it
    tok = pair.student.tokenizer
    rng = random.Random(size)
    prompt_ids = tok(QUESTION, add_special_tokens=False)["input_ids"]
    response_ids = [rng.randrange(3, len(tok)) for _ in range(size)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database=Path(tmp) / "db.sqlite3", max_response_tokens=size)
        analyzer = Analyzer(pair, settings)
        # The teacher's context: the same question after the privileged info.
        teacher_ids = tok("Reference: 17*23 = 391.\n" + QUESTION, add_special_tokens=False)["input_ids"]
        line = {"prompt_ids": prompt_ids, "response_ids": response_ids, "teacher_prompt_ids": teacher_ids}
        analyzer.analyze({"prompt_ids": prompt_ids, "response_ids": response_ids[:16]})  # warm
        base = peak_mb()
        start = time.perf_counter()
        analysis = analyzer.analyze(line)
        seconds = time.perf_counter() - start
        text = json.dumps(analysis)
    assert len(analysis["steps"]) == size
    return {
        "tokens": size,
        "seconds": seconds,
        "peak_above_load_mb": max(0.0, peak_mb() - base),
        "json_mb": len(text) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process's size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{size:>6} tokens: {r['seconds']:7.1f} s ({size / r['seconds']:.0f} tokens/s), "
            f"peak memory above the loaded model {r['peak_above_load_mb']:7.0f} MB, "
            f"analysis JSON {r['json_mb']:6.1f} MB ({r['peak_above_load_mb'] / r['json_mb']:.1f}x)",
            flush=True,
        )
    first, last = rows[0], rows[-1]
    grow = last["tokens"] / first["tokens"]
    print(
        f"{grow:.0f}x the tokens: {last['peak_above_load_mb'] / max(first['peak_above_load_mb'], 1):.1f}x "
        f"the peak memory, {last['seconds'] / first['seconds']:.1f}x the time "
        f"(linear would be {grow:.0f}x; quadratic {grow * grow:.0f}x)"
    )


if __name__ == "__main__":
    main()
