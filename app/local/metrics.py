"""Per-step statistics of two next-token distributions, fused into few passes over the vocabulary.

Pure tensor code: knows nothing about models, tokenizers or HTTP. `tests/test_engine.py` holds
every function here to its naive equivalent in `app/reference.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from vrollout.metrics.objectives import ObjectiveSpec

STEP_FIELDS = (
    "student_logprob",
    "teacher_logprob",
    "reverse_kl",
    "forward_kl",
    "student_entropy",
    "teacher_entropy",
)


@dataclass
class ChunkStats:
    """Statistics for C positions. Float fields are (C,) float32 in nats."""

    student_logprob: Tensor
    teacher_logprob: Tensor
    reverse_kl: Tensor
    forward_kl: Tensor
    student_entropy: Tensor
    teacher_entropy: Tensor
    teacher_top1_id: Tensor  # (C,) int64
    teacher_rank: Tensor  # (C,) int64, 1 = the teacher's top-1
    teacher_topk_ids: Tensor  # (C, k) int64
    teacher_topk_logprobs: Tensor  # (C, k) float32
    student_topk_ids: Tensor
    student_topk_logprobs: Tensor
    teacher_logprob_at_student_topk: Tensor  # (C, k) float32: log q_t at the student's top-k ids
    # The vocabulary-wide distillation objectives asked for (docs/objectives.md): name -> (C,)
    objectives: dict[str, Tensor] = field(default_factory=dict)


BLOCK_ROWS = 8  # CPU: positions per block, so a block's (rows, V) float32 buffers stay in cache
GROUP = 64  # vocabulary entries per group in the two-stage top-k


def _top1_topk(logprobs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """argmax (first occurrence, as `torch.argmax`) and `torch.topk(logprobs, k)` of each row.

    Two stages: the maximum of every group of GROUP entries, then an exact top-k among the k
    best groups only. Exact: each of the row's k largest values lies in a group whose maximum
    is at least that value, so the k best groups hold them all (only the order of tied indices
    may differ from `torch.topk`'s). One cheap pass over the row instead of a full selection.
    """
    R, V = logprobs.shape
    groups, rest = divmod(V, GROUP)
    if rest or groups < 4 * k:  # too few groups to pay off
        values, ids = torch.topk(logprobs, k, dim=-1)
        return logprobs.argmax(dim=-1), values, ids
    grouped = logprobs.view(R, groups, GROUP)
    group_max = grouped.amax(dim=-1)  # (R, G)
    rows = torch.arange(R, device=logprobs.device)
    first = group_max.argmax(dim=-1)  # (R,) the first group holding the row's maximum
    top1 = first * GROUP + grouped[rows, first].argmax(dim=-1)
    offsets = torch.arange(GROUP, device=logprobs.device)
    best_groups = torch.topk(group_max, k, dim=-1).indices  # (R, k)
    columns = (best_groups[:, :, None] * GROUP + offsets).view(R, k * GROUP)  # (R, k*GROUP)
    values, picked = torch.topk(logprobs.gather(1, columns), k, dim=-1)
    return top1, values, columns.gather(1, picked)


def step_stats(
    student_logits: Tensor,
    teacher_logits: Tensor,
    token_ids: Tensor,
    top_k: int,
    overwrite: bool = False,
    objectives: ObjectiveSpec | None = None,
) -> ChunkStats:
    """Every per-step metric of docs/metrics.md for one chunk of positions.

    student_logits, teacher_logits: (C, V), any float dtype (upcast here, a block at a time);
    token_ids: (C,) the student's actual tokens y_t.

    Naive equivalent (`reference.naive_step`): log_softmax both rows, then
    KL(p‖q) = Σ p (log p − log q), KL(q‖p), H = −Σ p log p, rank = 1 + #{v: q(v) > q(y)},
    argmax and top-k, each its own pass over the vocabulary; the teacher's log-probs at the
    student's top-k ids are log q gathered there (their exps sum to the teacher's mass on
    it). Here, on a CPU, the chunk goes BLOCK_ROWS positions at a time through a few float32
    buffers allocated once, small enough to stay in the cache, so the logits are read from
    memory once; on a GPU the whole chunk is one block. The logits are only read, unless
    `overwrite` says they are scratch: then, once read, a block of float32 logits serves as
    two of the buffers. Both arguments may be the same tensor.

    `objectives`: also each vocabulary-wide distillation objective it asks for
    (`objective_values`); the generalised JSD takes one more pass per block (`_jsd`), the top-k
    ones only the two top-k selections, made `objectives.k` wide.
    """
    C, V = student_logits.shape
    device, f32 = student_logits.device, torch.float32
    rows = C if device.type != "cpu" else max(1, min(BLOCK_ROWS, C))
    wanted = objectives.engine_names() if objectives is not None else ()
    k = max(top_k, 1, objectives.k if wanted else 0)
    mixed_jsd = any(n in wanted for n in ("jsd", "clipped_jsd")) and 0.0 < objectives.jsd_beta < 1.0  # type: ignore[union-attr]
    floats = torch.empty(len(STEP_FIELDS), C, dtype=f32, device=device)  # rows in STEP_FIELDS order
    (student_logprob, teacher_logprob, reverse_kl, forward_kl, student_entropy, teacher_entropy) = floats
    teacher_rank = torch.empty(C, dtype=torch.int64, device=device)
    teacher_top1_id = torch.empty(C, dtype=torch.int64, device=device)
    t_vals, s_vals = torch.empty(2, C, k, dtype=f32, device=device)
    t_ids, s_ids = torch.empty(2, C, k, dtype=torch.int64, device=device)
    t_at_s = torch.empty(C, k, dtype=f32, device=device)
    s_at_t = torch.empty(C, k, dtype=f32, device=device) if wanted else None  # log p_s at the teacher's top-k
    jsd = torch.empty(C, dtype=f32, device=device) if mixed_jsd else None
    # Each model's mass outside the teacher's top-k, summed there: 1 − Σ top-k cancels in float32
    tails = torch.empty(2, C, dtype=f32, device=device) if any("tail" in n for n in wanted) else None
    in_place = (
        overwrite
        and student_logits.dtype == teacher_logits.dtype == f32
        and student_logits.data_ptr() != teacher_logits.data_ptr()
    )
    buffers = torch.empty((4 if in_place else 6) + (jsd is not None), rows, V, dtype=f32, device=device)
    for r0 in range(0, C, rows):
        r1 = min(r0 + rows, C)
        logp, logq, p, q, *scratch = buffers[:, : r1 - r0]  # each (n, V)
        mixture = scratch.pop() if jsd is not None else None
        s_block, t_block = student_logits[r0:r1], teacher_logits[r0:r1]
        torch.log_softmax(s_block, -1, dtype=f32, out=logp)
        torch.log_softmax(t_block, -1, dtype=f32, out=logq)
        torch.softmax(s_block, -1, dtype=f32, out=p)
        torch.softmax(t_block, -1, dtype=f32, out=q)
        log_ratio, product = (s_block, t_block) if in_place else scratch  # the logits are read
        torch.sub(logp, logq, out=log_ratio)  # log p − log q
        torch.sum(torch.mul(p, log_ratio, out=product), -1, out=reverse_kl[r0:r1])
        torch.sum(torch.mul(q, log_ratio, out=product), -1, out=forward_kl[r0:r1])  # negated below
        torch.sum(torch.mul(p, logp, out=product), -1, out=student_entropy[r0:r1])  # negated below
        torch.sum(torch.mul(q, logq, out=product), -1, out=teacher_entropy[r0:r1])
        index = token_ids[r0:r1].view(-1, 1)  # (n, 1)
        torch.gather(logp, 1, index, out=student_logprob[r0:r1].view(-1, 1))
        torch.gather(logq, 1, index, out=teacher_logprob[r0:r1].view(-1, 1))
        torch.sum(logq > teacher_logprob[r0:r1].view(-1, 1), -1, out=teacher_rank[r0:r1])
        teacher_top1_id[r0:r1], t_vals[r0:r1], t_ids[r0:r1] = _top1_topk(logq, k)
        _, s_vals[r0:r1], s_ids[r0:r1] = _top1_topk(logp, k)
        torch.gather(logq, 1, s_ids[r0:r1], out=t_at_s[r0:r1])  # teachability
        if s_at_t is not None:
            torch.gather(logp, 1, t_ids[r0:r1], out=s_at_t[r0:r1])
        if jsd is not None and mixture is not None:
            _jsd(logp, logq, p, q, objectives.jsd_beta, mixture, product, out=jsd[r0:r1])  # type: ignore[union-attr]
        if tails is not None:
            outside = logq < t_vals[r0:r1, objectives.k - 1 : objectives.k]  # type: ignore[union-attr]
            torch.sum(torch.mul(p, outside, out=product), -1, out=tails[0, r0:r1])
            torch.sum(torch.mul(q, outside, out=product), -1, out=tails[1, r0:r1])
    forward_kl.neg_()
    floats[4:].neg_()  # entropies
    floats[2:].clamp_(min=0.0)
    floats[2:4] += 0.0  # no -0.0 KL
    values = {}
    if wanted:
        assert objectives is not None and s_at_t is not None
        values = objective_values(
            objectives, reverse_kl, forward_kl, jsd, t_vals, s_at_t, s_vals, t_at_s, tails
        )
    return ChunkStats(
        student_logprob=student_logprob,
        teacher_logprob=teacher_logprob,
        reverse_kl=reverse_kl,
        forward_kl=forward_kl,
        student_entropy=student_entropy,
        teacher_entropy=teacher_entropy,
        teacher_top1_id=teacher_top1_id,
        teacher_rank=teacher_rank + 1,
        teacher_topk_ids=t_ids[:, :top_k],
        teacher_topk_logprobs=t_vals[:, :top_k],
        student_topk_ids=s_ids[:, :top_k],
        student_topk_logprobs=s_vals[:, :top_k],
        teacher_logprob_at_student_topk=t_at_s[:, :top_k],
        objectives=values,
    )


def _jsd(
    logp: Tensor,
    logq: Tensor,
    p: Tensor,
    q: Tensor,
    beta: float,
    mixture: Tensor,
    product: Tensor,
    out: Tensor,
) -> None:
    """TRL's generalised JSD of one block, 0 < β < 1 (GKDTrainer.generalized_jsd_loss):
    β KL(q ‖ m) + (1 − β) KL(p ‖ m) with m = β q + (1 − β) p, summed over the vocabulary.
    The mixture is made from the probabilities (no exp); its log is floored at float32's
    smallest normal so a token both models give 0 adds 0 · finite, not 0 · inf."""
    torch.mul(q, beta, out=mixture).add_(p, alpha=1.0 - beta)
    mixture.clamp_(min=torch.finfo(torch.float32).tiny).log_()  # log m
    teacher_part = torch.sum(torch.sub(logq, mixture, out=product).mul_(q), -1)
    student_part = torch.sum(torch.sub(logp, mixture, out=product).mul_(p), -1)
    torch.add(teacher_part * beta, student_part, alpha=1.0 - beta, out=out)


VERL_LOGPROB_MIN = -10.0  # verl's DistillationLossConfig.log_prob_min_clamp default
TRL_TAIL_MAX_LOG_MASS = -1e-7  # TRL's _add_tail_bucket: the top-k mass kept below 1


def _truncated_kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Σ over the columns of a (log a − log b): a KL over a subset of the vocabulary."""
    return torch.sum(log_a.exp() * (log_a - log_b), -1)


def _with_tail(logprobs: Tensor, tail: Tensor | None) -> Tensor:
    """TRL's tail bucket (experimental/server_distillation `_add_tail_bucket`): a (k+1)-th column
    log(1 − Σ exp(top-k)), the top-k's log mass kept at most −1e-7 (the tail at least
    1 − e^−1e-7). `tail`: the mass outside the top-k summed there, (C,), the same number
    without float32's cancellation where the top-k holds nearly all of it."""
    if tail is None:
        log_mass = torch.logsumexp(logprobs, -1, keepdim=True).clamp(max=TRL_TAIL_MAX_LOG_MASS)
        log_tail = torch.log(-torch.expm1(log_mass))
    else:
        log_tail = tail.double().clamp(min=-math.expm1(TRL_TAIL_MAX_LOG_MASS)).log()[:, None]
    return torch.cat([logprobs, log_tail], -1)


def objective_values(
    spec: ObjectiveSpec,
    reverse_kl: Tensor,
    forward_kl: Tensor,
    jsd: Tensor | None,
    t_vals: Tensor,
    s_at_t: Tensor,
    s_vals: Tensor,
    t_at_s: Tensor,
    tails: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every vocabulary-wide objective `spec` asks for, from one chunk's (C,) KLs and (C, ≥k)
    top-k log-probs: the teacher's top-k `t_vals` with the student's at the same ids `s_at_t`,
    the student's top-k `s_vals` with the teacher's there `t_at_s`; `tails` (2, C): the student's
    and the teacher's mass outside the teacher's top-k. In float64 (they are small).
    Definitions and sources: docs/objectives.md; `reference.naive_objectives` is the naive twin."""
    k = spec.k
    lq_t, lp_t = t_vals[:, :k].double(), s_at_t[:, :k].double()  # teacher's top-k support
    lp_s, lq_s = s_vals[:, :k].double(), t_at_s[:, :k].double()  # student's top-k support
    beta, tau = spec.jsd_beta, spec.clip_tau
    p_tail, q_tail = (None, None) if tails is None else tails
    if beta == 0.0:  # TRL's β = 0 and β = 1 branches are the plain KLs
        jsd = forward_kl
    elif beta == 1.0:
        jsd = reverse_kl
    verl_q, verl_p = lq_t.clamp(min=VERL_LOGPROB_MIN), lp_t.clamp(min=VERL_LOGPROB_MIN)
    make = {
        "jsd": lambda: jsd,
        # verl's forward_kl_topk: log-probs floored at −10, the sum floored at 0
        "topk_forward_kl": lambda: _truncated_kl(verl_q, verl_p).clamp(min=0.0),
        "topk_reverse_kl": lambda: _truncated_kl(verl_p, verl_q).clamp(min=0.0),
        "student_topk_reverse_kl": lambda: _truncated_kl(lp_s, lq_s),
        "student_topk_forward_kl": lambda: _truncated_kl(lq_s, lp_s),
        "topk_tail_reverse_kl": lambda: _truncated_kl(_with_tail(lp_t, p_tail), _with_tail(lq_t, q_tail)),
        "topk_tail_forward_kl": lambda: _truncated_kl(_with_tail(lq_t, q_tail), _with_tail(lp_t, p_tail)),
        "clipped_reverse_kl": lambda: reverse_kl.double().clamp(max=tau),
        "clipped_jsd": lambda: jsd.double().clamp(max=tau),  # type: ignore[union-attr]
    }
    out = {name: make[name]() for name in spec.engine_names()}
    if any(name.startswith("clipped_") for name in out):
        out["clip_hit"] = reverse_kl > tau
    return out
