"""Signal concentration against the naive definitions of DESIGN.md ("Signal concentration")."""

import math
import random

import pytest
from vrollout.core.signal import concentration, lorenz


def naive(k: list[float]) -> dict:
    T, total = len(k), sum(k)
    if T == 0 or total == 0:
        return dict.fromkeys(("top_1pct", "top_5pct", "top_10pct", "top_20pct", "tokens_for_80pct", "gini"))
    ordered = sorted(k, reverse=True)
    out = {}
    for name, x in (("top_1pct", 1), ("top_5pct", 5), ("top_10pct", 10), ("top_20pct", 20)):
        out[name] = sum(ordered[: max(1, math.ceil(x / 100 * T - 1e-12))]) / total
    out["tokens_for_80pct"] = min(n for n in range(1, T + 1) if sum(ordered[:n]) >= 0.8 * total) / T
    out["gini"] = sum(abs(a - b) for a in k for b in k) / (2 * T * total)
    return out


@pytest.mark.parametrize("T", [1, 2, 7, 20, 99, 100, 101, 333])
def test_concentration_equals_the_naive_definitions(T: int) -> None:
    rng = random.Random(T)
    for _ in range(5):
        k = [rng.expovariate(1.0) ** 3 * (rng.random() < 0.7) for _ in range(T)]
        if sum(k) == 0:
            k[0] = 1.0
        got, want = concentration(k), naive(k)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_edge_cases() -> None:
    assert concentration([]) == naive([])
    assert all(v is None for v in concentration([0.0, 0.0]).values())
    even = concentration([1.0] * 100)
    assert even["top_1pct"] == pytest.approx(0.01) and even["top_20pct"] == pytest.approx(0.2)
    assert even["tokens_for_80pct"] == pytest.approx(0.8) and even["gini"] == pytest.approx(0.0)
    one = concentration([0.0] * 99 + [5.0])
    assert one["top_1pct"] == 1.0 and one["tokens_for_80pct"] == 0.01
    assert one["gini"] == pytest.approx(0.99)  # (T-1)/T: all of it on one token


def test_lorenz_curve_matches_the_top_shares() -> None:
    k = [random.Random(3).random() ** 4 for _ in range(200)]
    curve = lorenz(k)
    c = concentration(k)
    assert curve["x"][0] == 0 and curve["y"][0] == 0 and curve["y"][-1] == pytest.approx(1.0)
    assert curve["y"][5] == pytest.approx(c["top_5pct"]) and curve["y"][20] == pytest.approx(c["top_20pct"])
    assert all(a <= b for a, b in zip(curve["y"], curve["y"][1:], strict=False))
    assert lorenz([0.0, 0.0]) is None
