"""The pedagogical rollout: the student drives, the teacher steps in only where it must.

The student proposes each token (greedy or sampled, seeded). Where the teacher finds the
proposal unacceptable (its probability below `threshold`, or its rank above `max_rank`), the
teacher substitutes its own top-1 token and the student continues from there. Both models
decode incrementally with their own key/value caches. `reference.naive_pedagogical` is the
same loop with a full forward pass per step. No HTTP, no storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from vrollout.core.answers import answer_matches
from vrollout.core.replay import Progress, _no_progress
from vrollout.local.continuations import eos_ids
from vrollout.local.engine import head_logits
from vrollout.local.models import LoadedModel, ModelPair


@dataclass
class Policy:
    threshold: float = 0.05  # teacher probability below which a proposal is unacceptable
    max_rank: int | None = None  # teacher rank above which a proposal is unacceptable
    temperature: float = 0.0  # the student's sampling temperature (0 = greedy)
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0


def propose(logp: Tensor, policy: Policy, generator: torch.Generator) -> int:
    """The student's token from its log-probs (V,): greedy, or sampled with temperature/top-p."""
    if policy.temperature <= 0:
        return int(logp.argmax())
    probs = torch.softmax(logp / policy.temperature, dim=-1)
    if policy.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < policy.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def decide(logp: Tensor, logq: Tensor, policy: Policy, generator: torch.Generator) -> dict[str, Any]:
    """One step: the student's proposal, the teacher's verdict, and the token taken."""
    proposal = propose(logp, policy, generator)
    teacher_prob = math.exp(float(logq[proposal]))
    rank = 1 + int((logq > logq[proposal]).sum())
    unacceptable = teacher_prob < policy.threshold or (policy.max_rank is not None and rank > policy.max_rank)
    token = int(logq.argmax()) if unacceptable else proposal
    return {
        "proposal": proposal,
        "token": token,
        "intervened": unacceptable,
        "proposal_teacher_prob": teacher_prob,
        "proposal_teacher_rank": rank,
        "student_logprob": float(logp[token]),
        "teacher_logprob": float(logq[token]),
    }


class Decoder:
    """Incremental greedy-style decoding of one model from a context, with its KV cache."""

    def __init__(self, model: LoadedModel, context: list[int], vocab_size: int) -> None:
        self.model, self.vocab = model, vocab_size
        self.decoder = model.model.get_decoder()
        out = self.decoder(input_ids=torch.tensor([context], device=model.device), use_cache=True)
        self.cache, self.length = out.cache, len(context)
        self.hidden = out.last_hidden_state[0, -1:]  # (1, H)

    def logprobs(self) -> Tensor:
        logits = head_logits(self.model, self.hidden, self.vocab)[0].float()  # (V,)
        return torch.log_softmax(logits, dim=-1)

    def push(self, token: int) -> None:
        out = self.decoder(
            input_ids=torch.tensor([[token]], device=self.model.device),
            position_ids=torch.tensor([[self.length]], device=self.model.device),
            cache=self.cache,
            use_cache=True,
        )
        self.cache, self.length = out.cache, self.length + 1
        self.hidden = out.last_hidden_state[0, -1:]


def summarize_rollout(
    pair: ModelPair, steps: list[dict[str, Any]], policy: Policy, reference: str | None
) -> dict[str, Any]:
    tok = pair.student.tokenizer
    ids = [s["token"] for s in steps]
    text = tok.decode(ids, skip_special_tokens=False)
    interventions = [
        {
            "position": i,
            "proposal_id": s["proposal"],
            "proposal": tok.decode([s["proposal"]]),
            "proposal_teacher_prob": s["proposal_teacher_prob"],
            "proposal_teacher_rank": s["proposal_teacher_rank"],
            "substitute_id": s["token"],
            "substitute": tok.decode([s["token"]]),
            "student_surprisal": -s["student_logprob"],
        }
        for i, s in enumerate(steps)
        if s["intervened"]
    ]
    return {
        "policy": vars(policy).copy(),
        "response_ids": ids,
        "response_text": text,
        "tokens": [
            {
                "position": i,
                "token_id": s["token"],
                "token": tok.decode([s["token"]]),
                "source": "teacher" if s["intervened"] else "student",
                "student_logprob": s["student_logprob"],
                "teacher_logprob": s["teacher_logprob"],
            }
            for i, s in enumerate(steps)
        ],
        "interventions": interventions,
        "num_interventions": len(interventions),
        "reference_answer": reference,
        "reached_reference": (
            answer_matches(tok.decode(ids, skip_special_tokens=True), reference) if reference else None
        ),
    }


@torch.inference_mode()
def pedagogical_rollout(
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    policy: Policy,
    reference: str | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Generate one trajectory under `policy`; see the module docstring."""
    generator = torch.Generator().manual_seed(policy.seed)
    student = Decoder(pair.student, student_context, pair.vocab_size)
    teacher = Decoder(pair.teacher, teacher_context, pair.vocab_size)
    eos = eos_ids(pair.student)
    steps: list[dict[str, Any]] = []
    for i in range(policy.max_new_tokens):
        step = decide(student.logprobs(), teacher.logprobs(), policy, generator)
        steps.append(step)
        progress("pedagogical", i + 1, policy.max_new_tokens)
        if step["token"] in eos:
            break
        student.push(step["token"])
        teacher.push(step["token"])
    return summarize_rollout(pair, steps, policy, reference)


def threshold_sweep(
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    policy: Policy,
    thresholds: list[float],
    reference: str | None,
    progress: Progress = _no_progress,
    rollout: Callable[..., dict[str, Any]] = pedagogical_rollout,
) -> list[dict[str, Any]]:
    """Interventions needed vs success, one rollout per threshold (same seed)."""
    rows = []
    for i, threshold in enumerate(thresholds):
        run = rollout(
            pair, student_context, teacher_context, Policy(**{**vars(policy), "threshold": threshold}),
            reference,
        )  # fmt: skip
        rows.append(
            {
                "threshold": threshold,
                "num_interventions": run["num_interventions"],
                "tokens": len(run["response_ids"]),
                "reached_reference": run["reached_reference"],
                "response_text": run["response_text"],
            }
        )
        progress("sweep", i + 1, len(thresholds))
    return rows
