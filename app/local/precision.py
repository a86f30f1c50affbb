"""How far a reduced-precision local model's numbers may be trusted (docs/metrics.md, "Noise
bounds"): the same `noise` object, `uncertain` flags and KL intervals the vLLM backend gives.

The bound is measured once, at start-up, on the probe (`metrics.noise.PROBE_MESSAGES`): the
model as it runs (bf16 or fp16 decoder, float32 head, `local.head`) against a float32 copy of the
same weights on the CPU, read in float64. Method "fp32-copy": the bound is `SAFETY` times the
largest difference over the top-`NOISE_K` tokens of either pass and the actual token, at every
probe position. Where no float32 copy fits (a model split across devices, or out of memory) the
bound is the one stated for the dtype (`REPEAT_FLOOR`, method "per-dtype").
The per-step flags and intervals come from `metrics.intervals`, over positions made of the
replay's top-`NOISE_K` lists (the student's, the teacher's, and the teacher's log-probs at the
student's), as a server's would be.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from vrollout.local.engine import final_hidden, head_logits
from vrollout.metrics.intervals import noise_fields
from vrollout.metrics.noise import FLOOR_MARGIN, REPEAT_FLOOR, SAFETY, Noise, probe_ids
from vrollout.metrics.topk_bounds import Position
from vrollout.models import LoadedModel
from vrollout.pipeline.replay import ReplayResult

NOISE_K = 20  # top-k of each model kept for the intervals (trimmed to the request's top_k after)
REDUCED = (torch.bfloat16, torch.float16)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def reduced(model: LoadedModel) -> bool:
    return model.dtype in REDUCED


@torch.inference_mode()
def measure_noise(model: LoadedModel, vocab_size: int) -> Noise:
    """The noise of `model` (below float32) on the probe, against a float32 copy (module docstring)."""
    ids = probe_ids(model.tokenizer)
    name = dtype_name(model.dtype)
    try:
        if getattr(model.model, "hf_device_map", None):
            raise MemoryError("a split model: no float32 copy")
        reference = copy.deepcopy(model.model).to("cpu", torch.float32)
        exact = reference(input_ids=torch.tensor([ids])).logits[0, :-1, :vocab_size].double()
        del reference
    except (MemoryError, torch.OutOfMemoryError):
        return Noise(name, REPEAT_FLOOR[name], "per-dtype", REPEAT_FLOOR[name] / SAFETY, len(ids) - 1, None)
    exact = exact.log_softmax(-1).cpu()  # (L-1, V): position i predicts ids[i + 1]
    logits = head_logits(model, final_hidden(model, ids)[:-1], vocab_size)
    ours = torch.log_softmax(logits, -1).double().cpu()  # as the engine computes them
    k = min(NOISE_K, vocab_size)
    watched = torch.cat(
        [ours.topk(k, -1).indices, exact.topk(k, -1).indices, torch.tensor(ids[1:])[:, None]], 1
    )
    worst = float((ours.gather(1, watched) - exact.gather(1, watched)).abs().max())
    floor = float(exact.min()) - FLOOR_MARGIN
    return Noise(name, SAFETY * worst, "fp32-copy", worst, len(ids) - 1, floor)


def positions(result: ReplayResult, response: list[int]) -> tuple[list[Position], list[Position]]:
    """The student's and the teacher's `Position`s at every step, from the replay's top-k lists:
    what a server with top-k = the replay's would have reported."""
    students, teachers = [], []
    for t, y in enumerate(response):
        k = len(result.teacher_topk_ids[t])
        s_ids, t_ids = result.student_topk_ids[t], result.teacher_topk_ids[t]
        p = dict(zip(s_ids, result.student_topk_logprobs[t], strict=True))
        p_ranks = {i: r for r, i in enumerate(s_ids, start=1)}
        p.setdefault(y, result.student_logprob[t])
        p_ranks.setdefault(y, k + 1)  # not in the top-k: its rank is unknown, past k
        q = dict(zip(s_ids, result.teacher_logprob_at_student_topk[t], strict=True))
        q_ranks = dict.fromkeys(s_ids, k + 1)
        q.update(zip(t_ids, result.teacher_topk_logprobs[t], strict=True))
        q_ranks.update({i: r for r, i in enumerate(t_ids, start=1)})
        q[y] = result.teacher_logprob[t]
        q_ranks[y] = min(q_ranks.get(y, k + 1), result.teacher_rank[t])
        students.append(Position(p, p_ranks, k))
        teachers.append(Position(q, q_ranks, k))
    return students, teachers


def noise_record(
    noise: Noise | None, result: ReplayResult, response: list[int], vocab_size: int, top_k: int
) -> dict[str, Any]:
    """The analysis's `noise` and its per-step fields (`uncertain`, KL and entropy intervals);
    the result's top-k lists are trimmed back to the request's `top_k` afterwards."""
    if noise is None:
        return {}
    student, teacher = positions(result, response)
    fields = noise_fields(student, teacher, noise.logprob_bound, noise.logprob_floor, vocab_size)
    trim(result, top_k)
    return {"noise": noise.as_dict(), "per_step": fields}


TOPK_FIELDS = (
    "teacher_topk_ids",
    "teacher_topk_logprobs",
    "student_topk_ids",
    "student_topk_logprobs",
    "teacher_logprob_at_student_topk",
)


def trim(result: ReplayResult, top_k: int) -> None:
    for name in TOPK_FIELDS:
        setattr(result, name, [row[:top_k] for row in getattr(result, name)])
