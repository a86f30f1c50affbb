"""The naive reference (docs/metrics.md), for tests and benchmarks only.

For every step t it runs each model on the prefix alone and reads the last position's
distribution, then computes each metric straight from its definition. Slow on purpose.
"""

from __future__ import annotations

from typing import Any

import torch
from vrollout.models import LoadedModel, ModelPair


@torch.inference_mode()
def last_logprobs(model: LoadedModel, ids: list[int], vocab_size: int) -> torch.Tensor:
    """log π(·|ids): a full forward pass over `ids`, last position, as float32 (V,)."""
    logits = model.model(input_ids=torch.tensor([ids], device=model.device)).logits
    return torch.log_softmax(logits[0, -1, :vocab_size].float(), dim=-1)


def naive_step(
    logp: torch.Tensor, logq: torch.Tensor, token: int, top_k: int, mass_k: int | None = None
) -> dict[str, Any]:
    """Every field of one step from the two full log-distributions, one definition at a time.
    `mass_k`: the student's top-k size for the teacher's mass on it (default `top_k`)."""
    p, q = logp.exp(), logq.exp()
    t_vals, t_ids = torch.topk(logq, top_k)
    s_vals, s_ids = torch.topk(logp, top_k)
    student_topk = torch.topk(logp, top_k if mass_k is None else mass_k).indices
    return {
        "student_logprob": logp[token].item(),
        "teacher_logprob": logq[token].item(),
        "advantage": (logq[token] - logp[token]).item(),
        "reverse_kl": torch.sum(p * (logp - logq)).item(),
        "forward_kl": torch.sum(q * (logq - logp)).item(),
        "student_entropy": -torch.sum(p * logp).item(),
        "teacher_entropy": -torch.sum(q * logq).item(),
        "teacher_top1_id": int(torch.argmax(q)),
        "agree": int(torch.argmax(q)) == token,
        "teacher_rank": 1 + int(torch.sum(q > q[token])),
        "teacher_topk_ids": t_ids.tolist(),
        "teacher_topk_logprobs": t_vals.tolist(),
        "student_topk_ids": s_ids.tolist(),
        "student_topk_logprobs": s_vals.tolist(),
        "teacher_mass_on_student_topk": sum(q[v].item() for v in student_topk.tolist()),
        "teacher_margin": (t_vals[0] - t_vals[1]).item() if top_k > 1 else float("inf"),
    }


def naive_replay(
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    response: list[int],
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """One dict per step; T + T full forward passes over growing prefixes."""
    steps = []
    for t, token in enumerate(response):
        logp = last_logprobs(pair.student, student_context + response[:t], pair.vocab_size)
        logq = last_logprobs(pair.teacher, teacher_context + response[:t], pair.vocab_size)
        steps.append(naive_step(logp, logq, token, max(top_k, 2), mass_k=top_k))
    return steps


@torch.inference_mode()
def naive_continuation(model: LoadedModel, prefix: list[int], k: int, vocab_size: int) -> list[int]:
    """The greedy k-token continuation of `prefix`, one full forward pass per new token."""
    ids = list(prefix)
    for _ in range(k):
        logits = model.model(input_ids=torch.tensor([ids], device=model.device)).logits
        ids.append(int(logits[0, -1, :vocab_size].argmax()))
    return ids[len(prefix) :]


def naive_pedagogical(
    pair: ModelPair, student_context: list[int], teacher_context: list[int], policy: Any
) -> list[dict[str, Any]]:
    """The pedagogical loop with a full forward pass of each model over each prefix."""
    from vrollout.local.continuations import eos_ids
    from vrollout.local.pedagogical import decide

    generator = torch.Generator().manual_seed(policy.seed)
    eos = eos_ids(pair.student)
    tokens: list[int] = []
    steps = []
    for _ in range(policy.max_new_tokens):
        logp = last_logprobs(pair.student, student_context + tokens, pair.vocab_size)
        logq = last_logprobs(pair.teacher, teacher_context + tokens, pair.vocab_size)
        step = decide(logp, logq, policy, generator)
        steps.append(step)
        tokens.append(step["token"])
        if step["token"] in eos:
            break
    return steps
