"""Stored analyses of any size without a model: the shape of `POST /api/analyze`'s JSON (top-k
lists on both sides included, so they weigh what real ones do), with seeded random numbers.
For storage and export tests and benchmarks/abuse_storage.py, where model work would only
cost time."""

from __future__ import annotations

import math
import random
from typing import Any

from vrollout.ids import new_id, now
from vrollout.pipeline.assembly import summarize


def synthetic_analysis(
    tokens: int,
    top_k: int = 20,
    seed: int = 0,
    job: dict[str, Any] | None = None,
    trajectory_id: str | None = None,
    reference_answer: str | None = None,
    response_text: str | None = None,
) -> dict[str, Any]:
    rng = random.Random(seed)
    words = ["the", " answer", " is", " 42", ".", " Let", " me", " check", ":", " 17", "*", "23"]

    def topk() -> list[dict[str, Any]]:
        ids = rng.sample(range(49_152), top_k)
        return [{"token_id": i, "token": words[i % len(words)], "logprob": -rng.random() * 8} for i in ids]

    steps = []
    for t in range(tokens):
        agree = rng.random() < 0.8
        student, teacher = -rng.random() * 3, -rng.random() * 3
        steps.append(
            {
                "position": t,
                "token_id": rng.randrange(49_152),
                "token": words[t % len(words)],
                "student_logprob": student,
                "teacher_logprob": teacher,
                "advantage": teacher - student,
                "reverse_kl": math.exp(rng.uniform(-9, 1)),
                "forward_kl": math.exp(rng.uniform(-9, 1)),
                "student_entropy": rng.random() * 4,
                "teacher_entropy": rng.random() * 4,
                "teacher_top1_id": rng.randrange(49_152),
                "teacher_top1": words[(t + 1) % len(words)],
                "agree": agree,
                "teacher_rank": 1 if agree else rng.randrange(2, 50),
                "teacher_topk": topk(),
                "student_topk": topk(),
                "teacher_continuation": None,
            }
        )
    text = response_text if response_text is not None else "".join(s["token"] for s in steps)
    prompt = [{"role": "user", "content": f"question {seed}"}]
    return {
        "id": new_id(),
        "created_at": now(),
        "student": {
            "model": "synthetic-student",
            "context_ids": [1, 2, 3],
            "context_text": prompt[0]["content"],
        },
        "teacher": {
            "model": "synthetic-teacher",
            "context_ids": [1, 2, 3, 4],
            "context_text": prompt[0]["content"] + " (hint)",
            "privileged": "hint",
            "shared_weights": True,
        },
        "response_ids": [s["token_id"] for s in steps],
        "response_text": text,
        "retokenized": False,
        "steps": steps,
        "virtual_rollout": {"token_ids": [s["teacher_top1_id"] for s in steps], "text": text},
        "summary": summarize(steps),
        "trajectory": {
            "format": "text",
            "id": trajectory_id,
            "reference_answer": reference_answer,
            "meta": {},
            "prompt": prompt,
        },
        "top_k": top_k,
        "generation": None,
        "backend": "local",
        "notes": [],
        **({"job": job} if job else {}),
    }


def synthetic_job(jobs: Any, lines: int, tokens: int, top_k: int = 20, **fields: Any) -> str:
    """A finished job of `lines` synthetic analyses, stored as the runner stores them."""
    job_id = jobs.create(
        "synthetic.jsonl", {}, [(n, {"prompt": "q", "response": "r"}) for n in range(1, lines + 1)], []
    )
    for start in range(1, lines + 1, 50):
        done = [
            (n, synthetic_analysis(tokens, top_k, seed=n, job={"id": job_id, "line": n}, **fields))
            for n in range(start, min(lines, start + 49) + 1)
        ]
        jobs.complete(job_id, done)
    jobs.set_state(job_id, "done")
    return job_id


# A context step's figures: null on a step the student did not write (docs/metrics.md).
CONTEXT_NULL = ("student_logprob", "teacher_logprob", "advantage", "reverse_kl", "forward_kl",
                "student_entropy", "teacher_entropy", "teacher_rank")  # fmt: skip


def conversation_analysis(tokens: int = 600, seed: int = 7, thinking: bool = True) -> dict[str, Any]:
    """An agent's conversation, by hand, as the #25 contract shapes it: assistant turns (the
    student's, scored; with `thinking`, the first 60 tokens of each turn thinking, then the
    answer; else no segment) around a tool's turn (context: scored false, null figures), every
    step with its message index."""
    a = synthetic_analysis(tokens, top_k=3, seed=seed)
    a["trajectory"]["conversation"] = [
        {"role": "user", "content": "What is 17*23? Use the calculator."},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calc"}}]},
        {"role": "tool", "content": "391"},
        {"role": "assistant", "content": "391"},
    ]
    tool = range(tokens // 3, tokens // 2)
    for i, s in enumerate(a["steps"]):
        s["scored"] = i not in tool
        s["turn"] = 1 if i < tool.start else 2 if i in tool else 3
        first_of_turn = 0 if i < tool.start else tool.stop
        s["segment"] = None
        if thinking and i not in tool:
            s["segment"] = "thinking" if i - first_of_turn < 60 else "answer"
        if i in tool:
            s.update(dict.fromkeys(CONTEXT_NULL), agree=True, teacher_topk=[], student_topk=[])
    a["response_mask"] = [int(s["scored"]) for s in a["steps"]]
    a["summary"] = summarize(a["steps"])
    return a
