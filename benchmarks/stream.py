"""Streaming CLI: peak RSS of `vrollout analyze` on a small and a large file, and its speed.

Builds a tiny random Llama and a byte-level tokenizer (as tests/support/tiny.py does, smaller
still), saves them to a temporary folder, writes two JSONL files of short trajectories (1,000 and
20,000 lines by default) and runs `vrollout analyze FILE --out FOLDER --student TINY --no-store`
on each as a subprocess, into a folder (so steps.parquet, the summaries, the figures and the
report are all written). The model is tiny so that model time does not hide what the CLI itself
keeps in memory. Peak RSS is the child's own (`os.wait4`'s ru_maxrss). Target: the large run's
peak RSS at most 10% over the small run's. Prints both figures, the ratio and lines per second.
`--format json` writes the files as one JSON array instead (read an item at a time).

Before that, the reading alone, with no model: a child that only iterates
`core.sources.iter_rows` over a 2 MB and a `--read-mb` (200) MB file of ~1 KB trajectories, as
JSONL and as a JSON array: peak RSS of each (same target) and MB read per second.

    .venv/bin/python benchmarks/stream.py [--small 1000] [--large 20000] [--format jsonl|json]
        [--read-mb 200]
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

TARGET = 1.10
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def save_tiny_model(folder: Path) -> None:
    """A 1-layer random Llama and a byte-level BPE tokenizer, saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS,
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)


def write_lines(path: Path, count: int, fmt: str = "jsonl") -> None:
    """Short trajectories, each a little different (ids, numbers), one per line (JSONL) or one
    per item of a JSON array (`fmt` "json")."""
    with path.open("w") as f:
        f.write("[\n" if fmt == "json" else "")
        for i in range(count):
            line = {"id": f"t{i}", "prompt": f"{i % 97}+{i % 89}?", "response": f"={i % 97 + i % 89}"}
            sep = ",\n" if fmt == "json" and i < count - 1 else "\n"
            f.write(json.dumps(line) + sep)
        f.write("]\n" if fmt == "json" else "")


def write_megabytes(path: Path, megabytes: int, fmt: str) -> int:
    """About `megabytes` MB of ~1 KB trajectories (quotes, brackets and escapes in their text),
    as JSONL or a JSON array; how many."""
    text = 'It is "4" [checked] \\ so {done}. ' * 24
    count = megabytes * 1000
    with path.open("w") as f:
        f.write("[\n" if fmt == "json" else "")
        for i in range(count):
            line = json.dumps({"id": f"t{i}", "prompt": f"What is {i}+{i}?", "response": text})
            f.write(line + (",\n" if fmt == "json" and i < count - 1 else "\n"))
        f.write("]\n" if fmt == "json" else "")
    return count


READ = (  # the child of `read_only`: iterate the rows, keep none
    "import sys; from vrollout.config import Settings; from vrollout.inputs.sources import iter_rows; "
    "print(sum(1 for _ in iter_rows(sys.argv[1], name='x', settings=Settings())))"
)


def read_only(source: Path) -> tuple[float, float, int]:
    """Peak RSS (MiB) of a child that reads `source` through iter_rows, its time (s), its rows."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", READ, str(source)], stdout=subprocess.PIPE)
    rows = int((proc.stdout.read() if proc.stdout else b"0").strip() or 0)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, rows


def reading(root: Path, megabytes: int) -> bool:
    """The reading alone, 2 MB vs `megabytes` MB, JSONL and JSON array; whether the target is met."""
    met = True
    for fmt in ("jsonl", "json"):
        peaks = []
        for size in (2, megabytes):
            source = root / f"read-{size}.{fmt}"
            count = write_megabytes(source, size, fmt)
            rss, seconds, rows = read_only(source)
            mb = source.stat().st_size / 1e6
            source.unlink()
            if rows != count:
                print(f"{fmt} {size} MB: read {rows} rows of {count}")
                return False
            peaks.append(rss)
            print(
                f"reading {fmt:>5} {mb:6.0f} MB: peak RSS {rss:6.1f} MiB, "
                f"{mb / seconds:5.1f} MB/s (start-up included)"
            )
        ratio = peaks[1] / peaks[0]
        met = met and ratio <= TARGET
        print(f"  peak RSS ratio {megabytes} / 2 MB ({fmt}): {ratio:.3f} (target <= {TARGET:.2f})")
    return met


def run(source: Path, out: Path, model: Path) -> tuple[float, float, int]:
    """Peak RSS (MiB) of one `vrollout analyze` run, its wall time (s), its exit status."""
    cli = Path(sys.executable).with_name("vrollout")
    argv = [str(cli), "analyze", str(source), "--out", str(out), "--student", str(model)]
    argv += ["--device", "cpu", "--dtype", "float32", "--no-store"]
    # One thread: a tiny model's kernels gain nothing from more, and lose much on a busy machine.
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(stderr.decode(errors="replace")[-2000:])
    return usage.ru_maxrss / 1024, elapsed, proc.returncode  # ru_maxrss: KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--format", choices=("jsonl", "json"), default="jsonl", help="of the analysed files")
    parser.add_argument("--read-mb", dest="read_mb", type=int, default=200, help="the large file read alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # First, while this process is small: a child's ru_maxrss counts the parent's pages at fork
        read_met = reading(root, args.read_mb)
        save_tiny_model(root / "tiny")
        results, times = {}, {}
        for count in (args.small, args.large):
            source = root / f"lines-{count}.{args.format}"
            write_lines(source, count, args.format)
            rss, seconds, code = run(source, root / f"out-{count}", root / "tiny")
            if code:
                print(f"{count} lines: vrollout analyze exited with {code}")
                return 1
            analysed = sum(1 for _ in (root / f"out-{count}" / "analyses.jsonl").open())
            results[count], times[count] = rss, seconds
            print(
                f"{count:>6} lines: peak RSS {rss:7.1f} MiB, {seconds:7.1f} s, "
                f"{analysed / seconds:6.1f} lines/s (start-up included)"
            )
        ratio = results[args.large] / results[args.small]
        steady = (args.large - args.small) / max(1e-9, times[args.large] - times[args.small])
        print(f"lines per second without start-up (the difference of the two runs): {steady:.1f}")
        met = "met" if ratio <= TARGET else "NOT met"
        print(
            f"peak RSS ratio {args.large} / {args.small} lines: {ratio:.3f} (target <= {TARGET:.2f}: {met})"
        )
        print(f"load average while measured: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0 if ratio <= TARGET and read_met else 1


if __name__ == "__main__":
    sys.exit(main())
