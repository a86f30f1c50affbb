"""The vLLM backend's pure parts: parsing `prompt_logprobs` and the top-K estimator (no server)."""

from __future__ import annotations

import math
import random

import pytest
from vrollout.vllm.topk import (
    REST_MARGIN,
    BadServerAnswer,
    Position,
    entropy_bounds,
    kl_lower_bound,
    parse_positions,
    replay_from_positions,
)

P = [0.5, 0.2, 0.15, 0.1, 0.05]  # student, 5 tokens
Q = [0.3, 0.4, 0.12, 0.1, 0.08]  # teacher


def entry(dist: list[float], k: int, actual: int) -> dict[str, dict]:
    """What vLLM answers for one position: the top-k, then the actual token with its rank
    (vLLM counts ties with `>=`; these distributions have none)."""
    order = sorted(range(len(dist)), key=lambda i: -dist[i])
    out = {
        str(actual): {
            "logprob": math.log(dist[actual]),
            "rank": order.index(actual) + 1,
            "decoded_token": "y",
        }
    }
    for r, i in enumerate(order[:k], start=1):
        out[str(i)] = {"logprob": math.log(dist[i]), "rank": r, "decoded_token": f"t{i}"}
    return out


def position(dist: list[float], k: int, actual: int) -> Position:
    return parse_positions([None, entry(dist, k, actual)], [9, actual], 1, k)[0]


def exact_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def entropy(p: list[float]) -> float:
    return -sum(a * math.log(a) for a in p if a > 0)


def test_parse_a_hand_built_answer():
    tokens = [1, 7, 3]
    answer = [
        None,
        {"7": {"logprob": -0.25, "rank": 1, "decoded_token": "a"}, "4": {"logprob": -2.0, "rank": 2}},
        {
            "3": {"logprob": -5.0, "rank": 40},
            "8": {"logprob": -0.1, "rank": 1},
            "4": {"logprob": -3, "rank": 2},
        },
    ]
    first, second = parse_positions(answer, tokens, 1, 2)
    assert first.logprobs == {7: -0.25, 4: -2.0} and first.ranks == {7: 1, 4: 2}
    assert second.top(2) == [(8, -0.1), (4, -3.0)] and second.ranks[3] == 40
    with pytest.raises(BadServerAnswer, match="2 entries for a prompt of 3"):
        parse_positions(answer[:2], tokens, 1, 2)
    with pytest.raises(BadServerAnswer, match="lacks the prompt's own token 5"):
        parse_positions(answer, [1, 7, 5], 1, 2)


def test_estimator_equals_its_formula_and_stays_below_the_exact_kl():
    y = 2
    p, q = position(P, 2, y), position(Q, 2, y)
    # Known under both: {0, 1} (both top-2 lists) and y = 2; the rest is {3, 4}.
    p_rest, q_rest = 1 - (0.5 + 0.2 + 0.15), 1 - (0.3 + 0.4 + 0.12)
    want = (
        0.5 * math.log(0.5 / 0.3)
        + 0.2 * math.log(0.2 / 0.4)
        + 0.15 * math.log(0.15 / 0.12)
        + p_rest * math.log(p_rest / (q_rest + REST_MARGIN))
    )
    assert kl_lower_bound(p.logprobs, q.logprobs) == pytest.approx(want, abs=1e-12)
    assert want <= exact_kl(P, Q)
    back = 0.3 * math.log(0.3 / 0.5) + 0.4 * math.log(0.4 / 0.2) + 0.12 * math.log(0.12 / 0.15)
    back += q_rest * math.log(q_rest / (p_rest + REST_MARGIN))
    assert kl_lower_bound(q.logprobs, p.logprobs) == pytest.approx(back, abs=1e-12)
    assert back <= exact_kl(Q, P)
    # Entropy: top-2 of p plus y known; the rest (0.15) sits on tokens of p <= 0.2.
    lower, upper = entropy_bounds(p, vocab_size=5)
    known = -(0.5 * math.log(0.5) + 0.2 * math.log(0.2) + 0.15 * math.log(0.15))
    assert lower == pytest.approx(known - 0.15 * math.log(0.15), abs=1e-12)
    assert upper == pytest.approx(known + 0.15 * math.log(2 / 0.15), abs=1e-12)
    assert lower <= entropy(P) <= upper


def random_dist(rng: random.Random, V: int, sharp: float) -> list[float]:
    w = [math.exp(sharp * rng.gauss(0, 1)) for _ in range(V)]
    total = sum(w)
    return [x / total for x in w]


@pytest.mark.parametrize("seed", range(20))
def test_bounds_hold_on_random_distributions(seed: int):
    rng = random.Random(seed)
    V = rng.randint(3, 60)
    p, q = random_dist(rng, V, rng.uniform(0.5, 4)), random_dist(rng, V, rng.uniform(0.5, 4))
    y = rng.randrange(V)
    for k in (1, 2, 5, V):
        k = min(k, V)
        sp, tq = position(p, k, y), position(q, k, y)
        assert kl_lower_bound(sp.logprobs, tq.logprobs) <= exact_kl(p, q) + 1e-12
        assert kl_lower_bound(tq.logprobs, sp.logprobs) <= exact_kl(q, p) + 1e-12
        lower, upper = entropy_bounds(sp, V)
        assert lower - 1e-12 <= entropy(p) <= upper + 1e-12
    # Everything known: the estimate is the exact value.
    sp, tq = position(p, V, y), position(q, V, y)
    assert kl_lower_bound(sp.logprobs, tq.logprobs) == pytest.approx(exact_kl(p, q), abs=1e-9)
    assert entropy_bounds(sp, V)[0] == pytest.approx(entropy(p), abs=1e-9)


def test_identical_models_give_zero_kl_and_full_agreement():
    response = [0, 1, 2]
    positions = [position(P, 2, y) for y in response]
    result, rest = replay_from_positions(positions, positions, response, 2, vocab_size=5)
    assert result.reverse_kl == result.forward_kl == [0.0, 0.0, 0.0]
    assert result.teacher_top1_id == [0, 0, 0] and result.teacher_rank == [1, 2, 3]
    assert result.teacher_topk_ids == [[0, 1]] * 3
    assert result.student_logprob == result.teacher_logprob == [math.log(P[y]) for y in response]
    assert rest["student"] == pytest.approx([0.3, 0.3, 0.15])


@pytest.mark.parametrize("seed", range(10))
def test_teacher_mass_estimate_is_a_lower_bound(seed: int):
    """Σ q over the student's top-k ids the teacher's answer holds: at most the exact mass, and
    exactly it when the teacher's top-K covers the student's top-k."""
    rng = random.Random(seed)
    V = rng.randint(4, 40)
    p, q = random_dist(rng, V, rng.uniform(0.5, 4)), random_dist(rng, V, rng.uniform(0.5, 4))
    y = rng.randrange(V)
    top_k = min(3, V)
    student_top = sorted(range(V), key=lambda i: -p[i])[:top_k]
    exact = sum(q[i] for i in student_top)
    for K in (1, 3, V):
        result, _ = replay_from_positions([position(p, 3, y)], [position(q, K, y)], [y], top_k, V)
        estimate = result.teacher_mass_on_student_topk()[0]
        assert estimate <= exact + 1e-12
        if K == V:
            assert estimate == pytest.approx(exact, abs=1e-12)
