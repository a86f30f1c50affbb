"""The noise arithmetic (`metrics/intervals.py`): uncertain steps and KL intervals that hold the
exact value when every reported log-prob is within the bound (no server)."""

from __future__ import annotations

import math
import random

import pytest
from vrollout.metrics.intervals import entropy_interval, is_uncertain, kl_interval, noise_fields, top2_gap
from vrollout.vllm.topk import Position, entropy_bounds, kl_lower_bound, parse_positions


def position(dist: list[float], k: int, actual: int) -> Position:
    return noisy_position(dist, k, actual, 0.0, random.Random(0))


def random_dist(rng: random.Random, V: int, sharp: float) -> list[float]:
    w = [math.exp(sharp * rng.gauss(0, 1)) for _ in range(V)]
    total = sum(w)
    return [x / total for x in w]


def exact_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def noisy_position(dist: list[float], k: int, actual: int, eps: float, rng: random.Random) -> Position:
    """What a server whose every log-prob is up to `eps` off reports: its own top-k by the noisy
    values, and the actual token."""
    noisy = [math.log(x) + rng.uniform(-eps, eps) for x in dist]
    order = sorted(range(len(dist)), key=lambda i: -noisy[i])
    entry = {str(i): {"logprob": noisy[i], "rank": r} for r, i in enumerate(order[:k], start=1)}
    entry[str(actual)] = {"logprob": noisy[actual], "rank": order.index(actual) + 1}
    return parse_positions([None, entry], [9, actual], 1, k)[0]


def test_top2_gap_and_uncertain_steps():
    sharp, flat = position([0.7, 0.2, 0.1], 2, 0), position([0.41, 0.39, 0.2], 2, 0)
    assert top2_gap(sharp) == pytest.approx(math.log(0.7 / 0.2))
    assert top2_gap(flat) == pytest.approx(math.log(0.41 / 0.39))  # 0.050 nats
    assert top2_gap(position([0.7, 0.2, 0.1], 1, 0)) == math.inf  # only one token known
    assert not is_uncertain(sharp, sharp, 0.02)
    assert is_uncertain(sharp, flat, 0.026) and is_uncertain(flat, sharp, 0.026)  # either model
    assert not is_uncertain(flat, flat, 0.024)  # 0.050 ≥ 2 × 0.024


def test_interval_is_the_exact_value_without_noise_or_tail():
    rng = random.Random(3)
    p, q = random_dist(rng, 12, 2.0), random_dist(rng, 12, 2.0)
    sp, tq = position(p, 12, 4), position(q, 12, 4)
    lo, hi = kl_interval(sp, tq, 0.0, min(math.log(x) for x in q))
    assert lo == pytest.approx(exact_kl(p, q), abs=1e-9) and hi == pytest.approx(exact_kl(p, q), abs=1e-9)
    assert kl_interval(position(p, 3, 4), tq, 0.0, None)[1] is None  # an unbounded tail: no hi


@pytest.mark.parametrize("seed", range(40))
def test_intervals_contain_the_exact_kl_under_noise(seed: int):
    """Every reported log-prob up to ε off, top-k by the noisy values: [lo, hi] holds the exact
    KL both ways, and the estimate sits inside; where the top-1 of the noisy values is not the
    exact top-1, the step is uncertain."""
    rng = random.Random(seed)
    V = rng.randint(5, 80)
    p, q = random_dist(rng, V, rng.uniform(0.5, 4)), random_dist(rng, V, rng.uniform(0.5, 4))
    floor = min(math.log(x) for x in p + q)
    y = rng.randrange(V)
    for eps in (0.0, 1e-4, 0.02, 0.2):
        for k in (1, 2, 5, 20):
            k = min(k, V)
            sp, tq = noisy_position(p, k, y, eps, rng), noisy_position(q, k, y, eps, rng)
            for a, b, want in ((sp, tq, exact_kl(p, q)), (tq, sp, exact_kl(q, p))):
                lo, hi = kl_interval(a, b, eps, floor)
                assert lo - 1e-12 <= want <= hi + 1e-12, (eps, k, lo, want, hi)
                assert lo <= kl_lower_bound(a.logprobs, b.logprobs) <= hi
            flipped = sp.top(1)[0][0] != max(range(V), key=lambda i: p[i])
            flipped |= tq.top(1)[0][0] != max(range(V), key=lambda i: q[i])
            if flipped and k >= 2:
                assert is_uncertain(sp, tq, eps)


def test_noise_fields_per_step():
    flat, sharp = position([0.41, 0.39, 0.2], 2, 0), position([0.7, 0.2, 0.1], 2, 1)
    fields = noise_fields([flat, sharp], [sharp, sharp], 0.03, math.log(0.1), 3)
    assert fields["uncertain"] == [True, False]
    assert fields["reverse_kl_interval"][1][0] == 0.0  # same distribution: lo is 0 ...
    assert 0.0 < fields["reverse_kl_interval"][1][1] < 0.3  # ... and hi only the noise and the tail
    for (lo, hi), want in zip(
        fields["forward_kl_interval"], [exact_kl([0.7, 0.2, 0.1], [0.41, 0.39, 0.2]), 0.0], strict=True
    ):
        assert lo <= want <= hi
    for name, dists in (
        ("student", [[0.41, 0.39, 0.2], [0.7, 0.2, 0.1]]),
        ("teacher", [[0.7, 0.2, 0.1]] * 2),
    ):
        for (lo, hi), dist in zip(fields[f"{name}_entropy_interval"], dists, strict=True):
            assert lo <= exact_entropy(dist) <= hi


def exact_entropy(p: list[float]) -> float:
    return -sum(a * math.log(a) for a in p if a > 0)


@pytest.mark.parametrize("seed", range(40))
def test_entropy_intervals_contain_the_exact_entropy_under_noise(seed: int):
    """The same noisy servers: [lo, hi] holds the exact entropy of each model, with the
    estimate (the lower end of `entropy_bounds` on the reported values) inside; without noise,
    the lower end is the estimate itself."""
    rng = random.Random(1000 + seed)
    V = rng.randint(5, 80)
    p = random_dist(rng, V, rng.uniform(0.3, 4))
    y = rng.randrange(V)
    for eps in (0.0, 1e-4, 0.02, 0.2, 1.0):
        for k in (1, 2, 5, 20):
            k = min(k, V)
            pos = noisy_position(p, k, y, eps, rng)
            lo, hi = entropy_interval(pos, eps, V)
            assert lo - 1e-12 <= exact_entropy(p) <= hi + 1e-12, (eps, k, lo, exact_entropy(p), hi)
            estimate, upper = entropy_bounds(pos, V)
            assert lo - 1e-12 <= estimate <= hi + 1e-12
            if eps == 0.0:
                assert lo == pytest.approx(estimate) and hi == pytest.approx(upper)


def test_entropy_interval_is_the_exact_value_when_everything_is_known():
    p = random_dist(random.Random(5), 9, 2.0)
    lo, hi = entropy_interval(position(p, 9, 3), 0.0, 9)
    assert lo == pytest.approx(exact_entropy(p)) and hi == pytest.approx(exact_entropy(p))
