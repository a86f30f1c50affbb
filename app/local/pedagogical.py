"""The pedagogical rollout on local models: the student drives, the teacher steps in only where
it must.

The student proposes each token (greedy or sampled, seeded). Where the teacher finds the
proposal unacceptable (`rules.unacceptable`), the teacher substitutes its own top-1 token and
the student continues from there. Both models decode incrementally with their own key/value
caches; the loop and the summary are `core.pedagogical`'s. `reference.naive_pedagogical` is the
same loop with a full forward pass per step. No HTTP, no storage.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from vrollout.core.pedagogical import rollout_steps, summarize_rollout
from vrollout.core.replay import Progress, _no_progress
from vrollout.core.rules import Policy, pedagogical_step
from vrollout.local.continuations import eos_ids
from vrollout.local.engine import head_logits
from vrollout.local.models import LoadedModel, ModelPair


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
    """One step from the student's and the teacher's log-probs (V,): the student's proposal,
    the teacher's verdict (`rules.pedagogical_step`), and the token taken."""
    proposal = propose(logp, policy, generator)
    return pedagogical_step(
        policy,
        proposal,
        teacher_prob=math.exp(float(logq[proposal])),
        rank=1 + int((logq > logq[proposal]).sum()),
        teacher_top1=int(logq.argmax()),
        logprobs=lambda token: (float(logp[token]), float(logq[token])),
    )


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


class _Stepper:
    """`core.pedagogical.Stepper` on two incremental decoders."""

    def __init__(
        self, pair: ModelPair, student_context: list[int], teacher_context: list[int], policy: Policy
    ) -> None:
        self.policy = policy
        self.generator = torch.Generator().manual_seed(policy.seed)
        self.student = Decoder(pair.student, student_context, pair.vocab_size)
        self.teacher = Decoder(pair.teacher, teacher_context, pair.vocab_size)

    def step(self, i: int) -> dict[str, Any]:
        return decide(self.student.logprobs(), self.teacher.logprobs(), self.policy, self.generator)

    def take(self, token: int) -> None:
        self.student.push(token)
        self.teacher.push(token)


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
    stepper = _Stepper(pair, student_context, teacher_context, policy)
    steps = rollout_steps(stepper, policy, eos_ids(pair.student), progress)
    return summarize_rollout(pair, steps, policy, reference)
