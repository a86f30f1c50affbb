"""The replay of a teacher with another tokenizer: each model teacher-forced over its own ids,
then the comparisons at the span starts of an alignment (docs/metrics.md, "Teachers with another
tokenizer").

Each side's per-token numbers come from `metrics.step_stats` over that side's own logits, chunk
by chunk as the engine makes them, so a same-tokenizer teacher forced through here gives the
engine's numbers exactly. The distributions are compared only over the spellings both
vocabularies have (`pipeline.align.shared_tokens`), the rest of each side's mass as one bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from vrollout.local.engine import forced_pass, head_logits
from vrollout.local.metrics import step_stats
from vrollout.models import LoadedModel, ModelPair
from vrollout.pipeline.align import Alignment, shared_tokens, token_keys
from vrollout.pipeline.cross import CrossResult, SideNumbers
from vrollout.pipeline.replay import Progress, _no_progress

MISSING_BUCKET = -100.0  # log-mass of a side's bucket when every one of its tokens is shared


@dataclass
class Vocabularies:
    """What each id of both vocabularies spells, and the pairs that spell the same: computed once
    per pair (a quarter of a second for a 262k vocabulary)."""

    student_keys: list[bytes | str | None]
    teacher_keys: list[bytes | str | None]
    student_shared: Tensor  # (M,) student ids of the shared spellings
    teacher_shared: Tensor  # (M,) the teacher ids spelling the same, in the same order

    @classmethod
    def of(cls, pair: ModelPair) -> Vocabularies:
        assert pair.teacher_vocab_size is not None
        s_keys = token_keys(pair.student.tokenizer, pair.vocab_size)
        t_keys = token_keys(pair.teacher.tokenizer, pair.teacher_vocab_size)
        s_ids, t_ids = shared_tokens(s_keys, t_keys)
        return cls(
            s_keys, t_keys, torch.tensor(s_ids, dtype=torch.long), torch.tensor(t_ids, dtype=torch.long)
        )

    def teacher_text(self, token_id: int) -> str:
        key = self.teacher_keys[token_id] if 0 <= token_id < len(self.teacher_keys) else None
        if isinstance(key, bytes):
            return key.decode("utf-8", errors="replace")
        return key if key is not None else ""


def side_numbers(
    model: LoadedModel, columns: int, hidden: Tensor, targets: list[int], top_k: int, chunk_size: int
) -> SideNumbers:
    """One model's numbers over its own tokens `targets`, from the final hidden states that predict
    them: `step_stats` with the model's logits on both sides (its 'student' fields are the model's
    own log-prob, entropy and top-k; its 'teacher' fields the top-1 and rank)."""
    out = SideNumbers()
    ids = torch.tensor(targets, device=hidden.device)
    for start in range(0, len(targets), chunk_size):
        stop = min(start + chunk_size, len(targets))
        logits = head_logits(model, hidden[start:stop], columns)
        stats = step_stats(logits, logits, ids[start:stop].to(logits.device), top_k)
        out.logprob.extend(stats.student_logprob.tolist())
        out.entropy.extend(stats.student_entropy.tolist())
        out.top1_id.extend(stats.teacher_top1_id.tolist())
        out.rank.extend(stats.teacher_rank.tolist())
        out.topk_ids.extend(stats.student_topk_ids.tolist())
        out.topk_logprobs.extend(stats.student_topk_logprobs.tolist())
        del logits
    return out


def _log_masses(logp: Tensor, shared: Tensor) -> tuple[Tensor, Tensor]:
    """(R, M) log-probs at the shared ids and (R,) the log of the rest's mass, in float64."""
    at = logp.gather(1, shared.expand(logp.shape[0], -1)).double()
    rest = torch.ones(logp.shape[1], dtype=torch.bool, device=logp.device)
    rest[shared] = False
    if not bool(rest.any()):
        return at, torch.full((logp.shape[0],), MISSING_BUCKET, dtype=torch.float64, device=logp.device)
    bucket = torch.logsumexp(logp[:, rest].double(), dim=-1).clamp(min=MISSING_BUCKET)
    return at, bucket


def _kl(lp: Tensor, lq: Tensor) -> Tensor:
    """Σ p (log p − log q) per row over (R, N) log-probs in float64, 0 · log 0 read as 0."""
    p = lp.exp()
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1).clamp(min=0.0)


def _mass_at(logq: Tensor, mapped: list[list[int]]) -> list[float]:
    """Per row of (R, V) log-probs, the float64 mass at its ids `mapped[row]` (0 for none), in
    one gather: rows padded to the longest with id 0, masked out of the sum."""
    width = max(map(len, mapped), default=0)
    if width == 0:
        return [0.0] * len(mapped)
    index = torch.tensor([ids + [0] * (width - len(ids)) for ids in mapped], device=logq.device)
    used = torch.tensor([[k < len(ids) for k in range(width)] for ids in mapped], device=logq.device)
    at = logq.gather(1, index).double().exp()
    return torch.where(used, at, torch.zeros_like(at)).sum(-1).tolist()


@torch.inference_mode()
def cross_replay(
    pair: ModelPair,
    vocab: Vocabularies,
    student_context: list[int],
    teacher_context: list[int],
    alignment: Alignment,
    top_k: int = 5,
    chunk_size: int = 128,
    progress: Progress = _no_progress,
) -> CrossResult:
    """Both models over their own tokens of the same text, then the estimates at span starts."""
    assert pair.teacher_vocab_size is not None
    s_ids, t_ids = alignment.student_ids, alignment.teacher_ids
    progress("replay", 0, 4)
    s_hidden = forced_pass(pair.student, student_context + s_ids, False)[0][len(student_context) - 1 : -1]
    progress("replay", 1, 4)
    t_hidden = forced_pass(pair.teacher, teacher_context + t_ids, False)[0][len(teacher_context) - 1 : -1]
    progress("replay", 2, 4)
    student = side_numbers(pair.student, pair.vocab_size, s_hidden, s_ids, top_k, chunk_size)
    teacher = side_numbers(pair.teacher, pair.teacher_vocab_size, t_hidden, t_ids, top_k, chunk_size)
    progress("replay", 3, 4)
    n = len(alignment.spans)
    rkl: list[float | None] = [None] * n
    fkl, mass, s_rest, t_rest = ([None] * n for _ in range(4))
    correction: list[bool | None] = [None] * n
    compared = [i for i, sp in enumerate(alignment.spans) if sp.teacher[1] > sp.teacher[0]]
    t_of_s = dict(zip(vocab.student_shared.tolist(), vocab.teacher_shared.tolist(), strict=True))
    for c0 in range(0, len(compared), chunk_size):
        rows = compared[c0 : c0 + chunk_size]
        s_rows = torch.tensor([alignment.spans[i].student[0] for i in rows], device=s_hidden.device)
        t_rows = torch.tensor([alignment.spans[i].teacher[0] for i in rows], device=t_hidden.device)
        logp = torch.log_softmax(head_logits(pair.student, s_hidden[s_rows], pair.vocab_size).float(), -1)
        logq = torch.log_softmax(
            head_logits(pair.teacher, t_hidden[t_rows], pair.teacher_vocab_size).float(), -1
        )
        # A split model's logits come out on its head's device: each side's own.
        lp, lp_rest = _log_masses(logp, vocab.student_shared.to(logp.device))
        lq, lq_rest = _log_masses(logq, vocab.teacher_shared.to(logq.device))
        lq, lq_rest = lq.to(lp.device), lq_rest.to(lp.device)
        lp_all, lq_all = torch.cat([lp, lp_rest[:, None]], 1), torch.cat([lq, lq_rest[:, None]], 1)
        # Everything a row needs from the device, read once per chunk (no per-token syncs).
        reverse, forward = _kl(lp_all, lq_all).tolist(), _kl(lq_all, lp_all).tolist()
        s_unmatched, t_unmatched = lp_rest.exp().tolist(), lq_rest.exp().tolist()
        mapped = [
            [t_of_s[v] for v in student.topk_ids[alignment.spans[i].student[0]] if v in t_of_s] for i in rows
        ]
        masses = _mass_at(logq, mapped)
        for j, i in enumerate(rows):
            k0, t0 = alignment.spans[i].student[0], alignment.spans[i].teacher[0]
            rkl[i], fkl[i] = reverse[j], forward[j]
            s_rest[i], t_rest[i], mass[i] = s_unmatched[j], t_unmatched[j], masses[j]
            top1 = teacher.top1_id[t0]
            correction[i] = vocab.teacher_keys[top1] in {vocab.student_keys[v] for v in student.topk_ids[k0]}
        del logp, logq
    shown = set(t_ids) | set(teacher.top1_id) | {i for row in teacher.topk_ids for i in row}
    progress("replay", 4, 4)
    return CrossResult(
        student=student,
        teacher=teacher,
        reverse_kl=rkl,
        forward_kl=fkl,
        mass_on_student_topk=mass,
        unmatched_student_mass=s_rest,
        unmatched_teacher_mass=t_rest,
        teacher_strings={i: vocab.teacher_text(i) for i in shown},
        correction_in_student_topk=correction,
        shared_vocabulary=len(t_of_s),
    )
