"""Helpers of the --ray tests (tests/cluster): files of lines to run, and analyses compared as the
issue asks (numbers within 1e-5, fp32 on CPU; ids and times aside)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FLAGS = ("--device", "cpu", "--dtype", "float32", "--no-store")


def write_lines(path: Path, count: int, bad_at: int | None = None) -> Path:
    """`count` short trajectories (each with an unknown key, `tag`), and one bad line (its prompt a
    number) inserted at index `bad_at` (default: the middle): line `bad_at + 1` of the file."""
    rows = [
        json.dumps(
            {"id": f"t{i}", "prompt": f"What is {i}+{i}?", "response": f"It is {2 * i + i % 3}.", "tag": i}
        )
        for i in range(count)
    ]
    rows.insert(count // 2 if bad_at is None else bad_at, '{"prompt": 3}')
    path.write_text("\n".join(rows) + "\n")
    return path


def sibling_lines(path: Path, prompts: int, per_prompt: int = 3) -> Path:
    """Lines that share prompts, some of whose responses are correct: what the sibling teacher
    context picks from (the first correct response of another line with the same prompt)."""
    rows = []
    for i in range(prompts):
        for j in range(per_prompt):
            right = (i + j) % 2 == 0
            response = f"{i}+{i} is {2 * i if right else 2 * i + 1}, attempt {j}."
            rows.append({"id": f"p{i}-{j}", "prompt": f"What is {i}+{i}?", "response": response,
                         "correct": right})  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def analyses(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same(x: Any, y: Any, where: str = "") -> None:
    """Equal analyses: floats within 1e-5, ids and times aside."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            if key not in ("id", "created_at", "analysis_id"):
                same(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y, strict=True)):
            same(a, b, f"{where}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-5, (where, x, y)
    else:
        assert x == y, (where, x, y)
