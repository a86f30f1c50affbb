"""How far reduced-precision numbers can be off, step by step: which steps' top-1 could flip,
and intervals [lo, hi] that hold the exact KL, given that every reported log-prob is within
`bound` nats of the exact one. A vLLM server's numbers (`vllm/noise.py` measures its bound) and
the local engine's for a model below float32 (`models.measure_noise`) alike.

Pure Python, like `topk_bounds.py` whose estimate it brackets; docs/metrics.md ("Noise bounds") has
the derivation. Knows nothing about HTTP, tensors or storage.
"""

from __future__ import annotations

import math
from typing import Any

from vrollout.metrics.topk_bounds import REST_MARGIN, Position, _xlogy_ratio, entropy_bounds, kl_lower_bound


def top2_gap(position: Position) -> float:
    """The log-prob gap between the server's top-1 and top-2 (inf with fewer than two known)."""
    top = position.top(2)
    return top[0][1] - top[1][1] if len(top) == 2 else math.inf


def is_uncertain(student: Position, teacher: Position, bound: float) -> bool:
    """True where the teacher's or the student's top-2 are closer than twice the bound: each may
    be off by `bound`, so the exact order of the two (top-1, ranks) could be the other way."""
    return min(top2_gap(student), top2_gap(teacher)) < 2 * bound


def _term_range(a: float, b: float, eps: float) -> tuple[float, float]:
    """min and max of e^x (x − c) over x ∈ [a−ε, a+ε], c ∈ [b−ε, b+ε]: one known token's
    contribution p(v) log(p(v)/q(v)) to a KL. Decreasing in c; in x it falls to e^(c−1) at
    x = c − 1 and rises after, so the extremes are at the ends or at that point."""

    def g(x: float, c: float) -> float:
        return math.exp(x) * (x - c)

    c_lo, c_hi = b - eps, b + eps
    lows = [g(a - eps, c_hi), g(a + eps, c_hi)]
    if a - eps < c_hi - 1 < a + eps:
        lows.append(-math.exp(c_hi - 1))
    return min(lows), max(g(a - eps, c_lo), g(a + eps, c_lo))


def _mass_range(logprobs: list[float], eps: float) -> tuple[float, float]:
    """The range of 1 − Σ e^l when every l may be off by ε (clipped to [0, 1])."""
    low = 1.0 - math.fsum(math.exp(v + eps) for v in logprobs)
    high = 1.0 - math.fsum(math.exp(v - eps) for v in logprobs)
    return min(1.0, max(0.0, low)), min(1.0, max(0.0, high))


def kl_interval(p: Position, q: Position, bound: float, floor: float | None) -> tuple[float, float | None]:
    """[lo, hi] around KL(p‖q) for positions whose log-probs may each be `bound` nats off.

    lo: the top-K estimate's own lower bound (`kl_lower_bound`), each term at its smallest over
    the noise box (a relaxation: the terms are minimised independently). hi: each known term at
    its largest, plus the tokens the estimate merged into "rest": every one has q(v) ≥ e^floor
    (`floor`: the smallest log-prob a token is taken to have, `noise.py`), and a token whose p
    is unknown has p(v) ≤ min(p_(K), P_U), so their part is at most P_U (log min(p_(K), P_U) −
    floor). Without a floor the tail is unbounded: hi is None."""
    eps = max(0.0, bound)
    lp, lq = p.logprobs, q.logprobs
    shared = lp.keys() & lq.keys()
    lo_terms, hi_terms = [], []
    for v in shared:
        low, high = _term_range(lp[v], lq[v], eps)
        lo_terms.append(low)
        hi_terms.append(high)
    p_rest = _mass_range([lp[v] for v in shared], eps)
    q_rest = _mass_range([lq[v] for v in shared], eps)
    # The rest bucket's P log(P/Q): smallest at the largest Q, and at P = Q/e if P may be there.
    q_big = max(q_rest[1], REST_MARGIN)
    p_at = min(max(q_big / math.e, p_rest[0]), p_rest[1])
    lo = math.fsum(lo_terms) + _xlogy_ratio(p_at, q_big)
    estimate = kl_lower_bound(lp, lq)
    lo = max(0.0, min(lo, estimate))
    if floor is None:
        return lo, None
    # Known p, unknown q (q ≥ e^floor): p log(p/q) ≤ e^(a+ε) (a + ε − floor).
    for v in lp.keys() - shared:
        hi_terms.append(math.exp(lp[v] + eps) * max(0.0, lp[v] + eps - floor))
    unknown = _mass_range(list(lp.values()), eps)[1]  # P_U: p's mass on tokens it did not report
    if unknown > 0.0:
        top = [v for i, v in lp.items() if p.ranks[i] <= p.k]
        cap = min(math.exp(min(top) + eps), unknown) if top else unknown
        hi_terms.append(unknown * max(0.0, math.log(cap) - floor))
    hi = max(math.fsum(hi_terms), lo, estimate)
    return lo, hi


def _neg_xlogx_range(a: float, eps: float) -> tuple[float, float]:
    """min and max of −e^x x over x ∈ [a−ε, a+ε]: one known token's share of an entropy. It rises
    up to x = −1 and falls after, so the minimum is at an end and the maximum there or at −1."""
    ends = [-math.exp(x) * x for x in (a - eps, a + eps)]
    top = math.exp(-1.0) if a - eps < -1.0 < a + eps else max(ends)
    return min(ends), top


def entropy_interval(position: Position, bound: float, vocab_size: int) -> tuple[float, float]:
    """[lo, hi] around one model's entropy H(p) from its top-K and actual token, each reported
    log-prob up to `bound` nats off. With exact values `topk.entropy_bounds` holds:
    known + R·(−log min(p_(K), R)) ≤ H ≤ known + R·log(N/R) (R the unknown mass, N = V − |known|).
    Each part is taken at its extreme over the noise box, independently (a relaxation, so still
    a bracket): the known terms by `_neg_xlogx_range`; R over [R_lo, R_hi] with p_(K) at its
    largest for the lower end. On [R_lo, R_hi] the lower part is concave up to R = p_(K) and linear
    after, so its minimum is at R_lo, R_hi or p_(K); R log(N/R) is concave with its top at N/e.
    No floor is needed: unlike a KL, an entropy is bounded by the vocabulary's size."""
    eps = max(0.0, bound)
    lp = position.logprobs
    ranges = [_neg_xlogx_range(v, eps) for v in lp.values()]
    known_lo, known_hi = math.fsum(r[0] for r in ranges), math.fsum(r[1] for r in ranges)
    r_lo, r_hi = _mass_range(list(lp.values()), eps)
    top = [v for i, v in lp.items() if position.ranks[i] <= position.k]
    cap = math.exp(min(top) + eps) if top else 1.0  # p_(K), taken ε up
    n = max(vocab_size - len(lp), 1)

    def lower_tail(r: float) -> float:
        return 0.0 if r <= 0.0 else -r * math.log(min(cap, r))

    def upper_tail(r: float) -> float:
        return 0.0 if r <= 0.0 else r * math.log(n / r)

    inside = [r for r in (cap, n / math.e) if r_lo < r < r_hi]
    lo = max(0.0, known_lo + min(lower_tail(r) for r in (r_lo, r_hi, *inside)))
    hi = known_hi + max(upper_tail(r) for r in (r_lo, r_hi, *inside))
    estimate = entropy_bounds(position, vocab_size)[0]
    return min(lo, estimate), max(hi, lo, estimate)


def noise_fields(
    student: list[Position], teacher: list[Position], bound: float, floor: float | None, vocab_size: int
) -> dict[str, list[Any]]:
    """The per-step fields of docs/metrics.md's "Noise bounds": `uncertain`,
    `reverse_kl_interval` (KL(p‖q), p the student), `forward_kl_interval` (KL(q‖p)), and
    `student_entropy_interval` / `teacher_entropy_interval`."""
    names = (
        "uncertain",
        "reverse_kl_interval",
        "forward_kl_interval",
        "student_entropy_interval",
        "teacher_entropy_interval",
    )
    fields: dict[str, list[Any]] = {name: [] for name in names}
    for p, q in zip(student, teacher, strict=True):
        fields["uncertain"].append(is_uncertain(p, q, bound))
        fields["reverse_kl_interval"].append(list(kl_interval(p, q, bound, floor)))
        fields["forward_kl_interval"].append(list(kl_interval(q, p, bound, floor)))
        fields["student_entropy_interval"].append(list(entropy_interval(p, bound, vocab_size)))
        fields["teacher_entropy_interval"].append(list(entropy_interval(q, bound, vocab_size)))
    return fields
