"""Multi-step arithmetic solutions with a known first wrong step, in ProcessBench's shape.

Each problem is a chain of operations on a starting number ("Start with 7. Add 5, then multiply
by 3, ..."). Each of its solutions is one step per operation plus a final answer step; an
erroneous one gets a wrong result at a chosen step (the label), and every later step computes
correctly from that wrong value, so the label is the *earliest* wrong step. The correct solution
is the privileged text and its result the reference answer. Seeded: the same arguments give the
same file.

    python examples/make_localization_data.py --problems 20 --per-problem 2 --out lines.jsonl
    vrollout localize lines.jsonl --out localization/
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

OPS = {"add": ("Add", "+"), "subtract": ("Subtract", "-"), "multiply": ("Multiply by", "*")}


def apply(op: str, value: int, operand: int) -> int:
    return value + operand if op == "add" else value - operand if op == "subtract" else value * operand


def problem(rng: random.Random, min_ops: int, max_ops: int) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randint(2, 20)
    chain = []
    for _ in range(rng.randint(min_ops, max_ops)):
        op = rng.choice(list(OPS))
        chain.append((op, rng.randint(2, 5) if op == "multiply" else rng.randint(2, 30)))
    return start, chain


def prompt_of(start: int, chain: list[tuple[str, int]]) -> str:
    ops = ", then ".join(f"{OPS[op][0].lower()} {n}" for op, n in chain)
    return f"Start with {start}. {ops[0].upper()}{ops[1:]}. What is the result? Work step by step."


def solution(
    start: int, chain: list[tuple[str, int]], wrong_at: int, rng: random.Random
) -> tuple[list[str], int]:
    """The steps (one per operation, then the answer) and the final value; `wrong_at` (-1: none)
    is the step whose result is off."""
    steps, value = [], start
    for i, (op, n) in enumerate(chain):
        right = apply(op, value, n)
        result = right
        if i == wrong_at:
            while result == right:
                result = right + rng.choice([-1, 1]) * rng.randint(1, 9)
        verb, sign = OPS[op]
        steps.append(f"Step {i + 1}: {verb} {n}: {value} {sign} {n} = {result}.")
        value = result
    steps.append(f"The answer is {value}.")
    return steps, value


def lines(
    problems: int, per_problem: int, p_correct: float, seed: int, min_ops: int, max_ops: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for p in range(problems):
        start, chain = problem(rng, min_ops, max_ops)
        correct_steps, answer = solution(start, chain, -1, rng)
        for k in range(per_problem):
            label = -1 if rng.random() < p_correct else rng.randrange(len(chain))
            steps, _ = solution(start, chain, label, rng) if label >= 0 else (correct_steps, answer)
            out.append(
                {
                    "id": f"p{p:03d}-{k}",
                    "prompt": prompt_of(start, chain),
                    "steps": steps,
                    "label": label,
                    "privileged": "\n".join(correct_steps),
                    "reference_answer": str(answer),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument(
        "--per-problem", dest="per_problem", type=int, default=2, help="solutions per problem"
    )
    parser.add_argument(
        "--p-correct", dest="p_correct", type=float, default=0.4, help="share of correct solutions"
    )
    parser.add_argument("--min-ops", dest="min_ops", type=int, default=3)
    parser.add_argument("--max-ops", dest="max_ops", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSONL file (default: standard output)")
    args = parser.parse_args(argv)
    rows = lines(args.problems, args.per_problem, args.p_correct, args.seed, args.min_ops, args.max_ops)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
