"""The pedagogical rollout on local models: the student drives, the teacher steps in only where
it must.

The student proposes each token (greedy or sampled, seeded). Where the teacher finds the
proposal unacceptable (`rules.unacceptable`), the teacher substitutes its own top-1 token and
the student continues from there. Both models decode incrementally with key/value caches; the
summary is `pipeline.pedagogical`'s. `reference.naive_pedagogical` is the same loop with a full
forward pass per step.

Several rollouts decode in lock step (`pedagogical_rollouts`): every row (a rollout's student
or teacher context, or both where one set of weights and one context serve them) is one row of
a batch per model, so a step costs one forward pass per model for all of them. A self-teacher
shares the student's weights, so even one rollout's student and teacher rows go through one
pass. Each row's context is prefilled alone and the caches are merged left-padded (the pads are
zero keys and values behind a mask), so a row sees exactly what it would alone; results equal
one-by-one rollouts within float tolerance, tokens included wherever no near-tie flips, and
each rollout samples from its own generator. No HTTP, no storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from vrollout.local.continuations import eos_ids
from vrollout.local.engine import finish_logits, head_logits
from vrollout.models import LoadedModel, ModelPair
from vrollout.pipeline.pedagogical import summarize_rollout
from vrollout.pipeline.replay import Progress, _no_progress
from vrollout.rules import Policy, pedagogical_step


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


FEW_ROWS = 8


def few_rows_logits(model: LoadedModel, hidden: Tensor, vocab_size: int) -> Tensor:
    """`engine.head_logits` for a few rows (a decoding step). On a CPU, PyTorch's `linear` with
    2-8 rows takes a GEMM path that repacks the head's weights on every call: for SmolLM2's
    49,152 x 576 head it costs 26 ms for 2 rows against 11 ms for 1. `weight @ hidden.T` reads
    the weights once as they lie (9-10 ms for 2 rows), the same product in another order. Only a
    plain bias-free float32 `Linear` that accelerate does not manage takes that path (a reduced-
    precision head goes to `head_logits`, which makes its product in float32)."""
    head = model.model.get_output_embeddings()
    plain = type(head) is torch.nn.Linear and head.bias is None and not hasattr(head, "_hf_hook")
    plain = plain and head.weight.dtype == torch.float32
    if not plain or not 1 < hidden.shape[0] <= FEW_ROWS or hidden.device.type != "cpu":
        return head_logits(model, hidden, vocab_size)
    return finish_logits(model, torch.matmul(head.weight, hidden.t()).t(), vocab_size)


@dataclass
class RolloutItem:
    """One rollout to run: the two contexts (ids), its policy (seed included), its reference."""

    student_context: list[int]
    teacher_context: list[int]
    policy: Policy
    reference: str | None = None


def _plain(cache: Any) -> bool:
    """Only plain full-attention layers can be merged by padding (not sliding windows)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class Rows:
    """Sequences of one model decoded in lock step, each from its own context, with one
    key/value cache. A cache other than plain full-attention layers (sliding windows) is not
    merged: each row then decodes alone."""

    def __init__(self, model: LoadedModel, contexts: list[list[int]], vocab_size: int) -> None:
        self.model, self.vocab = model, vocab_size
        self.decoder = model.model.get_decoder()
        self.device = model.device
        outs = [
            self.decoder(input_ids=torch.tensor([c], device=self.device), use_cache=True) for c in contexts
        ]
        self.lengths = [len(c) for c in contexts]
        self.hidden = torch.cat([o.last_hidden_state[:, -1] for o in outs])  # (B, H)
        self.caches: list[Any] | None = [o.cache for o in outs]
        self.cache: Any = None
        self.mask: Tensor | None = None  # (B, columns): 0 at pads; None where no row is padded
        if len(outs) > 1 and all(_plain(c) for c in self.caches):
            self._merge(self.caches)
            self.caches = None

    def _merge(self, caches: list[Any]) -> None:
        width = max(self.lengths)
        layers = []
        for parts in zip(*(c.layers for c in caches), strict=True):
            keys = [torch.nn.functional.pad(p.keys, (0, 0, width - p.keys.shape[2], 0)) for p in parts]
            values = [torch.nn.functional.pad(p.values, (0, 0, width - p.values.shape[2], 0)) for p in parts]
            layers.append((torch.cat(keys), torch.cat(values)))
        self.cache = DynamicCache(layers)
        if min(self.lengths) < width:
            self.mask = torch.zeros((len(caches), width), dtype=torch.long, device=self.device)
            for b, n in enumerate(self.lengths):
                self.mask[b, width - n :] = 1

    def logprobs(self) -> Tensor:
        """log π(·|row) at every row's current prefix, float32 (B, V)."""
        logits = few_rows_logits(self.model, self.hidden, self.vocab).float()
        return torch.log_softmax(logits, dim=-1)

    def push(self, tokens: list[int]) -> None:
        """Append one token to every row (in row order) and decode it."""
        ids = torch.tensor(tokens, device=self.device)[:, None]  # (B, 1)
        positions = torch.tensor(self.lengths, device=self.device)[:, None]
        if self.caches is not None:  # rows decoded alone
            hidden = []
            for b, cache in enumerate(self.caches):
                out = self.decoder(
                    input_ids=ids[b : b + 1], position_ids=positions[b : b + 1], cache=cache, use_cache=True
                )
                hidden.append(out.last_hidden_state[:, -1])
            self.hidden = torch.cat(hidden)
        else:
            if self.mask is not None:
                self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
            out = self.decoder(
                input_ids=ids,
                position_ids=positions,
                attention_mask=self.mask,
                cache=self.cache,
                use_cache=True,
            )
            self.hidden = out.last_hidden_state[:, -1]
        self.lengths = [n + 1 for n in self.lengths]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order): finished rollouts stop costing anything."""
        self.lengths = [self.lengths[b] for b in rows]
        index = torch.tensor(rows, device=self.hidden.device)
        self.hidden = self.hidden[index]
        if self.caches is not None:
            self.caches = [self.caches[b] for b in rows]
            return
        # A CPU index: a split model's layers (and their caches) sit on several devices.
        self.cache.batch_select_indices(index.cpu())
        if self.mask is not None:
            self.mask = self.mask[index.to(self.device)]


class _Batch:
    """The rows of several rollouts: where each rollout's student and teacher rows live."""

    def __init__(self, pair: ModelPair, items: list[RolloutItem]) -> None:
        # (model rows, their owners): an owner is (rollout, role), role "s", "t" or "st" (one row
        # serving both: shared weights and the same context give the same distribution).
        contexts: dict[str, list[list[int]]] = {"s": [], "t": []}
        self.owners: dict[str, list[tuple[int, str]]] = {"s": [], "t": []}
        one = pair.shared  # one set of weights: every row in one batch ("s")
        for i, item in enumerate(items):
            if one and item.student_context == item.teacher_context:
                self._add(contexts, "s", (i, "st"), item.student_context)
                continue
            self._add(contexts, "s", (i, "s"), item.student_context)
            self._add(contexts, "s" if one else "t", (i, "t"), item.teacher_context)
        self.student = Rows(pair.student, contexts["s"], pair.vocab_size)
        self.teacher = Rows(pair.teacher, contexts["t"], pair.vocab_size) if contexts["t"] else None

    def _add(
        self, contexts: dict[str, list[list[int]]], model: str, owner: tuple[int, str], ids: list[int]
    ) -> None:
        contexts[model].append(ids)
        self.owners[model].append(owner)

    def logprobs(self) -> dict[int, tuple[Tensor, Tensor]]:
        """For each live rollout: (student log-probs, teacher log-probs), (V,) each."""
        found: dict[int, dict[str, Tensor]] = {}
        for model, rows in (("s", self.student), ("t", self.teacher)):
            if rows is None:
                continue
            logp = rows.logprobs()
            for b, (i, role) in enumerate(self.owners[model]):
                for r in role:
                    found.setdefault(i, {})[r] = logp[b]
        return {i: (got["s"], got["t"]) for i, got in found.items()}

    def advance(self, taken: dict[int, int]) -> None:
        """Feed each continuing rollout its token; drop the rows of those that ended."""
        for model, rows in (("s", self.student), ("t", self.teacher)):
            if rows is None:
                continue
            owners = self.owners[model]
            keep = [b for b, (i, _) in enumerate(owners) if i in taken]
            if len(keep) < len(owners):
                rows.keep(keep)
                self.owners[model] = owners = [owners[b] for b in keep]
            if owners:
                rows.push([taken[i] for i, _ in owners])


@torch.inference_mode()
def pedagogical_rollouts(
    pair: ModelPair, items: list[RolloutItem], progress: Progress = _no_progress
) -> list[dict[str, Any]]:
    """Several rollouts decoded together, each as `pedagogical_rollout` would run it alone (its
    own policy and seeded generator), in the order given. Progress counts the longest one's steps.

    The loop is `pipeline.pedagogical.rollout_steps` for every rollout at once: a rollout ends once it
    takes an end-of-sequence token (kept) or its `max_new_tokens`; its rows then leave the batch.
    """
    if not items:
        return []
    eos = eos_ids(pair.student)
    generators = [torch.Generator().manual_seed(item.policy.seed) for item in items]
    steps: list[list[dict[str, Any]]] = [[] for _ in items]
    longest = max(item.policy.max_new_tokens for item in items)
    batch = _Batch(pair, items)
    for t in range(longest):
        taken: dict[int, int] = {}
        for i, (logp, logq) in batch.logprobs().items():
            step = decide(logp, logq, items[i].policy, generators[i])
            steps[i].append(step)
            if step["token"] not in eos and t + 1 < items[i].policy.max_new_tokens:
                taken[i] = step["token"]
        progress("pedagogical", t + 1, longest)
        if not taken:
            break
        batch.advance(taken)
    return [
        summarize_rollout(pair, s, item.policy, item.reference) for s, item in zip(steps, items, strict=True)
    ]


def pedagogical_rollout(
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    policy: Policy,
    reference: str | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Generate one trajectory under `policy`; see the module docstring."""
    item = RolloutItem(student_context, teacher_context, policy, reference)
    return pedagogical_rollouts(pair, [item], progress)[0]
