"""What a top-K list of log-probs says about the whole distribution: the `Position` a server
reports (top-K and the actual token), and lower bounds of KL and entropy from it, the
"rest" bucket holding the mass outside the known tokens (`vllm/topk.py`'s module docstring has
the derivation). Pure Python: shared by the vLLM backend, whose numbers these are, and the
local engine's noise bounds (`metrics/intervals.py`) for reduced-precision models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REST_MARGIN = 1e-6  # float32 rounding of the server's log-probs, added to the divisor's rest mass


@dataclass
class Position:
    """What a server told about one prompt position: the top-K tokens and the actual token."""

    logprobs: dict[int, float]  # token id -> log-prob (top-K ∪ {actual})
    ranks: dict[int, int]  # token id -> rank (1 = most likely)
    k: int  # K asked for

    def top(self, k: int) -> list[tuple[int, float]]:
        """The k most likely tokens (id, log-prob), most likely first."""
        ranked = sorted(((r, i) for i, r in self.ranks.items() if r <= self.k))
        return [(i, self.logprobs[i]) for _, i in ranked[:k]]


def _xlogy_ratio(a: float, b: float) -> float:
    """a log(a/b), with 0 log(0/b) = 0."""
    return 0.0 if a <= 0.0 else a * math.log(a / b)


def rest_mass(logprobs: dict[int, float], ids: set[int] | list[int]) -> float:
    """1 − Σ_{v∈ids} p(v), never below 0."""
    return max(0.0, 1.0 - math.fsum(math.exp(logprobs[i]) for i in ids))


def kl_lower_bound(p: dict[int, float], q: dict[int, float]) -> float:
    """KL_S(p‖q) of the module docstring: tokens known under both, plus one rest bucket."""
    shared = p.keys() & q.keys()
    known = math.fsum(math.exp(p[i]) * (p[i] - q[i]) for i in shared)
    p_rest, q_rest = rest_mass(p, shared), rest_mass(q, shared)
    return max(0.0, known + _xlogy_ratio(p_rest, q_rest + REST_MARGIN)) + 0.0


def entropy_bounds(position: Position, vocab_size: int) -> tuple[float, float]:
    """(lower, upper) bounds of the entropy from one model's top-K and actual token."""
    lp = position.logprobs
    known = -math.fsum(math.exp(v) * v for v in lp.values())
    rest = rest_mass(lp, lp.keys())
    if rest <= 0.0:
        return max(0.0, known), max(0.0, known)
    smallest_top = math.exp(min(v for i, v in lp.items() if position.ranks[i] <= position.k))
    # Never below 0: a server's noisy log-probs may sum past 1, which no distribution does.
    lower = max(0.0, known - rest * math.log(min(smallest_top, rest)))
    upper = known + rest * math.log(max(vocab_size - len(lp), 1) / rest)
    return lower, max(lower, upper)
