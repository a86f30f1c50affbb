"""The naive reference (docs/metrics.md), for tests and benchmarks only.

For every step t it runs each model on the prefix alone and reads the last position's
distribution, then computes each metric straight from its definition. Slow on purpose.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.models import LoadedModel, ModelPair


@torch.inference_mode()
def last_logprobs(
    model: LoadedModel, ids: list[int], vocab_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """log π(·|ids): a full forward pass over `ids`, last position, as `dtype` (V,)."""
    logits = model.model(input_ids=torch.tensor([ids], device=model.device)).logits
    return torch.log_softmax(logits[0, -1, :vocab_size].to(dtype), dim=-1)


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
        "agree": not bool(torch.any(q > q[token])),  # rank 1: a tie with the top-1 agrees
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


def naive_objectives(
    logp: torch.Tensor, logq: torch.Tensor, token: int, spec: ObjectiveSpec
) -> dict[str, Any]:
    """Every objective of docs/objectives.md at one step, in float64 from the two full
    log-distributions (V,), each written out from its framework's own formula, one at a time."""
    logp, logq = logp.double(), logq.double()
    p, q = logp.exp(), logq.exp()
    k, beta, tau = spec.k, spec.jsd_beta, spec.clip_tau
    reverse = torch.sum(p * (logp - logq)).item()
    forward = torch.sum(q * (logq - logp)).item()
    # TRL GKDTrainer.generalized_jsd_loss: β = 0 forward KL, β = 1 reverse KL, else via the
    # log-mixture log((1 − β) p + β q) (TRL takes a logsumexp of the two weighted log-probs)
    if beta == 0.0:
        jsd = forward
    elif beta == 1.0:
        jsd = reverse
    else:
        log_m = torch.logsumexp(torch.stack([logp + math.log1p(-beta), logq + math.log(beta)]), 0)
        jsd = (beta * torch.sum(q * (logq - log_m)) + (1 - beta) * torch.sum(p * (logp - log_m))).item()
    teacher_top = torch.topk(logq, k).indices
    student_top = torch.topk(logp, k).indices
    # verl forward_kl_topk: over the teacher's top-k, log-probs clamped at -10, result >= 0
    cq, cp = logq[teacher_top].clamp(min=-10.0), logp[teacher_top].clamp(min=-10.0)
    topk_forward = max(0.0, torch.sum(cq.exp() * (cq - cp)).item())
    topk_reverse = max(0.0, torch.sum(cp.exp() * (cp - cq)).item())

    def tail(support: torch.Tensor, logr: torch.Tensor) -> torch.Tensor:
        # TRL _add_tail_bucket: append log(1 − Σ_support r), the support's log mass at most −1e-7
        log_mass = min(torch.logsumexp(logr[support], 0).item(), -1e-7)
        return torch.cat(
            [logr[support], torch.tensor([math.log(-math.expm1(log_mass))], dtype=torch.float64)]
        )

    tp, tq = tail(teacher_top, logp), tail(teacher_top, logq)
    log_r = (logq[token] - logp[token]).item()
    return {
        "k1": (logp[token] - logq[token]).item(),  # tinker-cookbook: sampled log p − log q
        "k3": (math.exp(log_r) - 1) - log_r,
        "jsd": jsd,
        "topk_reverse_kl": topk_reverse,
        "topk_forward_kl": topk_forward,
        "student_topk_reverse_kl": torch.sum(p[student_top] * (logp - logq)[student_top]).item(),
        "student_topk_forward_kl": torch.sum(q[student_top] * (logq - logp)[student_top]).item(),
        "topk_tail_reverse_kl": torch.sum(tp.exp() * (tp - tq)).item(),
        "topk_tail_forward_kl": torch.sum(tq.exp() * (tq - tp)).item(),
        "clipped_reverse_kl": min(reverse, tau),
        "clipped_jsd": min(jsd, tau),  # slime OPSD: min(JSD_β, --opsd-jsd-clip)
        "clip_hit": reverse > tau,
    }


def naive_replay_objectives(
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    response: list[int],
    spec: ObjectiveSpec,
) -> list[dict[str, Any]]:
    """`naive_objectives` at every step, each model run on each prefix alone."""
    steps = []
    for t, token in enumerate(response):
        logp = last_logprobs(pair.student, student_context + response[:t], pair.vocab_size, torch.float64)
        logq = last_logprobs(pair.teacher, teacher_context + response[:t], pair.vocab_size, torch.float64)
        steps.append(naive_objectives(logp, logq, token, spec))
    return steps
