"""Per-step metrics from top-K log-probs (a vLLM server's `prompt_logprobs`), with the
probability mass outside the known tokens kept as one explicit "rest" bucket.

Exact from the server: each model's log-prob of the actual token, the teacher's rank of it and
its top-1, and both top-K lists. Estimated (lower bounds, see below): both KLs and both
entropies. Pure Python: knows nothing about HTTP, tensors or storage.

The estimator. At one step let S be the tokens whose log-probs are known under *both* models
(the actual token y_t, plus every token in both top-K lists), and R = V \\ S the rest, with
masses P_R = 1 − Σ_S p and Q_R = 1 − Σ_S q. Merging R into one outcome is a deterministic map
of the vocabulary, so by the data-processing (log-sum) inequality

    KL_S(p‖q) = Σ_{v∈S} p(v) log(p(v)/q(v)) + P_R log(P_R/Q_R)  ≤  KL(p‖q),

and the gap is exactly P_R · KL(p(·|R) ‖ q(·|R)) (chain rule): zero when either rest mass is
zero, small when the rest is light or alike under both models, and not bounded above in
general (q may put arbitrarily little mass where p puts some). The same holds for KL(q‖p).
Q_R is taken with a margin of 1e-6 (float32 rounding of the server's log-probs), which keeps
the estimate below the exact value. For each entropy the known set is that model's own top-K
(plus y_t); every unknown token has p(v) ≤ min(p_(K), P_R), where p_(K) is the K-th largest, so

    −Σ_K p log p + P_R · (−log min(p_(K), P_R))  ≤  H(p)  ≤  −Σ_K p log p + P_R log((V − |K|)/P_R),

and the lower bound is the estimate (`entropy_bounds` gives both).
"""

from __future__ import annotations

import math
from typing import Any

from vrollout.metrics.topk_bounds import (  # noqa: F401 (names this module has always offered)
    REST_MARGIN,
    Position,
    _xlogy_ratio,
    entropy_bounds,
    kl_lower_bound,
    rest_mass,
)
from vrollout.pipeline.replay import ReplayResult

ESTIMATED_FIELDS = (
    "reverse_kl",
    "forward_kl",
    "student_entropy",
    "teacher_entropy",
    "teacher_mass_on_student_topk",
)


class BadServerAnswer(ValueError):
    """A server's answer is not what the vLLM completions API promises."""


def parse_positions(prompt_logprobs: list[Any], tokens: list[int], start: int, k: int) -> list[Position]:
    """Positions start .. len(tokens)-1 of a `/v1/completions` answer's `prompt_logprobs` for the
    prompt `tokens`: entry i is a dict {"<token id>": {"logprob", "rank", "decoded_token"}}
    holding the top-K tokens at position i and the actual token tokens[i]."""
    if not isinstance(prompt_logprobs, list) or len(prompt_logprobs) != len(tokens):
        got = len(prompt_logprobs) if isinstance(prompt_logprobs, list) else type(prompt_logprobs).__name__
        raise BadServerAnswer(f"prompt_logprobs has {got} entries for a prompt of {len(tokens)} tokens")
    positions = []
    for i in range(start, len(tokens)):
        entry = prompt_logprobs[i]
        if not isinstance(entry, dict):
            raise BadServerAnswer(f"prompt_logprobs[{i}] is {entry!r}")
        logprobs = {int(t): float(v["logprob"]) for t, v in entry.items()}
        ranks = {int(t): int(v["rank"]) for t, v in entry.items()}
        if tokens[i] not in logprobs:
            raise BadServerAnswer(f"prompt_logprobs[{i}] lacks the prompt's own token {tokens[i]}")
        if sum(1 for r in ranks.values() if r <= k) < min(k, 1):
            raise BadServerAnswer(f"prompt_logprobs[{i}] has no top-1 token")
        positions.append(Position(logprobs, ranks, k))
    return positions


def strict_rank(position: Position, token: int) -> int:
    """1 + the number of tokens strictly more likely than `token`, as the local engine counts.
    vLLM counts the tokens at least as likely (itself included), so a tie with its top-1 comes
    back as rank 2: the tied tokens the server reported are taken off (docs/metrics.md, `agree`)."""
    value = position.logprobs[token]
    ties = sum(1 for v, lp in position.logprobs.items() if v != token and lp == value)
    return max(1, position.ranks[token] - ties)


def known_logprobs(q: dict[int, float], ids: list[int]) -> list[float]:
    """The teacher's log-probs at `ids` where the server told them (its top-K and the actual
    token), −inf elsewhere: their exps sum to a lower bound of the teacher's mass on `ids`."""
    return [q.get(i, -math.inf) for i in ids]


def replay_from_positions(
    student: list[Position], teacher: list[Position], response: list[int], top_k: int, vocab_size: int
) -> tuple[ReplayResult, dict[str, list[float]]]:
    """The engine's per-step arrays from two servers' positions over the same response, and
    each step's rest masses (P_R, Q_R of the module docstring, over the shared known set)."""
    result = ReplayResult()
    rest: dict[str, list[float]] = {"student": [], "teacher": []}
    for s, t, y in zip(student, teacher, response, strict=True):
        p, q = s.logprobs, t.logprobs
        t_top = t.top(max(top_k, 1))
        s_top = s.top(top_k)
        result.student_logprob.append(p[y])
        result.teacher_logprob.append(q[y])
        result.reverse_kl.append(kl_lower_bound(p, q))
        result.forward_kl.append(kl_lower_bound(q, p))
        result.student_entropy.append(entropy_bounds(s, vocab_size)[0])
        result.teacher_entropy.append(entropy_bounds(t, vocab_size)[0])
        result.teacher_top1_id.append(t_top[0][0])
        result.teacher_rank.append(strict_rank(t, y))
        result.teacher_topk_ids.append([i for i, _ in t_top[:top_k]])
        result.teacher_topk_logprobs.append([v for _, v in t_top[:top_k]])
        result.student_topk_ids.append([i for i, _ in s_top])
        result.student_topk_logprobs.append([v for _, v in s_top])
        result.teacher_logprob_at_student_topk.append(known_logprobs(q, [i for i, _ in s_top]))
        shared = p.keys() & q.keys()
        rest["student"].append(rest_mass(p, shared))
        rest["teacher"].append(rest_mass(q, shared))
    return result, rest
