"""Per-step statistics of two next-token distributions, fused into few passes over the vocabulary.

Pure tensor code: knows nothing about models, tokenizers or HTTP. `tests/test_engine.py` holds
every function here to its naive equivalent in `app/reference.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
    """
    C, V = student_logits.shape
    device, f32 = student_logits.device, torch.float32
    rows = C if device.type != "cpu" else max(1, min(BLOCK_ROWS, C))
    k = max(top_k, 1)
    floats = torch.empty(len(STEP_FIELDS), C, dtype=f32, device=device)  # rows in STEP_FIELDS order
    (student_logprob, teacher_logprob, reverse_kl, forward_kl, student_entropy, teacher_entropy) = floats
    teacher_rank = torch.empty(C, dtype=torch.int64, device=device)
    teacher_top1_id = torch.empty(C, dtype=torch.int64, device=device)
    t_vals, s_vals = torch.empty(2, C, k, dtype=f32, device=device)
    t_ids, s_ids = torch.empty(2, C, k, dtype=torch.int64, device=device)
    t_at_s = torch.empty(C, k, dtype=f32, device=device)
    in_place = (
        overwrite
        and student_logits.dtype == teacher_logits.dtype == f32
        and student_logits.data_ptr() != teacher_logits.data_ptr()
    )
    buffers = torch.empty(4 if in_place else 6, rows, V, dtype=f32, device=device)
    for r0 in range(0, C, rows):
        r1 = min(r0 + rows, C)
        logp, logq, p, q, *scratch = buffers[:, : r1 - r0]  # each (n, V)
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
    forward_kl.neg_()
    floats[4:].neg_()  # entropies
    floats[2:].clamp_(min=0.0)
    floats[2:4] += 0.0  # no -0.0 KL
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
    )
