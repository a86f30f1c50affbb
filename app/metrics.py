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


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[c, v] · b[c, v] without materialising a (C, V) product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)  # (C,)


def step_stats(
    student_logits: Tensor,
    teacher_logits: Tensor,
    token_ids: Tensor,
    top_k: int,
    overwrite: bool = False,
) -> ChunkStats:
    """Every per-step metric of DESIGN.md for one chunk of positions.

    student_logits, teacher_logits: (C, V), any float dtype (upcast here, one chunk at a time);
    token_ids: (C,) the student's actual tokens y_t.

    Naive equivalent (`reference.naive_step`): log_softmax both rows, then
    KL(p‖q) = Σ p (log p − log q), KL(q‖p), H = −Σ p log p, rank = 1 + #{v: q(v) > q(y)},
    each its own pass over the vocabulary. Here the four sums share the probabilities and
    the log-ratio, and the dot products go through bmm, so the chunk is read a few times.
    overwrite: the logits are scratch and may be turned into log-probs in place (saves a copy).
    """
    logp = student_logits.float()  # (C, V); a copy unless the input is already fp32
    logq = teacher_logits.float()
    if not overwrite and logp.data_ptr() == student_logits.data_ptr():
        logp = logp.clone()
    if not overwrite and logq.data_ptr() == teacher_logits.data_ptr():
        logq = logq.clone()
    logp -= torch.logsumexp(logp, dim=-1, keepdim=True)  # log p_t, in place
    logq -= torch.logsumexp(logq, dim=-1, keepdim=True)  # log q_t
    p = logp.exp()  # (C, V)
    q = logq.exp()
    log_ratio = logp - logq  # (C, V): log p − log q
    reverse_kl = _row_dot(p, log_ratio).clamp_(min=0.0) + 0.0  # + 0.0: no -0.0
    forward_kl = (-_row_dot(q, log_ratio)).clamp_(min=0.0) + 0.0
    student_entropy = -_row_dot(p, logp)
    teacher_entropy = -_row_dot(q, logq)
    del p, q, log_ratio

    index = token_ids.view(-1, 1)  # (C, 1)
    student_logprob = logp.gather(1, index).view(-1)
    teacher_logprob = logq.gather(1, index).view(-1)
    teacher_rank = 1 + (logq > teacher_logprob.unsqueeze(1)).sum(dim=-1)
    teacher_top1_id = logq.argmax(dim=-1)
    k = max(top_k, 1)
    t_vals, t_ids = torch.topk(logq, k, dim=-1)
    s_vals, s_ids = torch.topk(logp, k, dim=-1)
    return ChunkStats(
        student_logprob=student_logprob,
        teacher_logprob=teacher_logprob,
        reverse_kl=reverse_kl,
        forward_kl=forward_kl,
        student_entropy=student_entropy.clamp_(min=0.0),
        teacher_entropy=teacher_entropy.clamp_(min=0.0),
        teacher_top1_id=teacher_top1_id,
        teacher_rank=teacher_rank,
        teacher_topk_ids=t_ids[:, :top_k],
        teacher_topk_logprobs=t_vals[:, :top_k],
        student_topk_ids=s_ids[:, :top_k],
        student_topk_logprobs=s_vals[:, :top_k],
    )
