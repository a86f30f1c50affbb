"""Signal concentration against the naive definitions of DESIGN.md ("Signal concentration")."""

import math
import random

import pytest
from vrollout.metrics.signal import (
    MIN_WINDOW,
    REJOIN_RUN,
    concentration,
    divergence_kind,
    fork_matters,
    lorenz,
    rejoin_position,
    rejoin_run,
)


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


# Surface or fork: the re-join rule of docs/metrics.md, against a brute force over every (i, j).
def naive_rejoin(c: list[int], y: list[int], d: int, window: int) -> int | None:
    run = min(REJOIN_RUN, window - 1)
    for j in range(d, d + window):
        for i in range(len(c)):
            whole = i + run <= len(c) and j + run <= len(y)
            if whole and all(c[i + r] == y[j + r] for r in range(run)):
                return j
    return None


@pytest.mark.parametrize("seed", range(40))
def test_rejoin_equals_the_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = rng.randint(2, 5)  # small alphabets: many partial matches and cut runs
    for _ in range(50):
        y = [rng.randrange(alphabet) for _ in range(rng.randint(1, 14))]
        d = rng.randrange(len(y))
        window = rng.randint(MIN_WINDOW, 8)
        n = rng.randint(1, window)  # cut short, as by an end-of-sequence token
        top1 = rng.choice([v for v in range(alphabet + 1) if v != y[d]])
        c = [top1] + [rng.randrange(alphabet) for _ in range(n - 1)]
        if rng.random() < 0.3:  # a continuation that ends as the response does
            c = (c + y[len(y) - rng.randint(1, len(y)) :])[:window]
        assert rejoin_position(c, y, d, window) == naive_rejoin(c, y, d, window), (c, y, d, window)


# Hand-built: token ids stand for words. y = "so 17 * 23 = 391 ." with a divergence at d.
Y = [10, 17, 30, 23, 40, 391, 50]  # so 17 * 23 = 391 .


def test_a_rewording_rejoins() -> None:
    # The teacher says "17 times 23 = 391" where the student wrote "17 * 23 = 391": at d = 2
    # ("*" vs "times") it re-joins at "23 = 391", the student's position 3.
    assert rejoin_position([31, 23, 40, 391], Y, 2, 4) == 3
    assert divergence_kind([31, 23, 40, 391], Y, 2, 4) == "surface"
    # An inserted word ("so , 17 * 23"): the continuation re-joins at the divergent token itself.
    assert rejoin_position([60, 17, 30, 23], Y, 1, 4) == 1
    # A dropped word: the teacher's first token is already the student's next one.
    assert rejoin_position([17, 30, 23], Y, 0, 3) == 1


def test_a_real_fork_does_not_rejoin() -> None:
    # The teacher computes something else ("17 * 20 = 340 ."): no run of 3 in common.
    assert divergence_kind([20, 40, 340, 50], Y, 3, 4) == "fork"
    # One shared token is not a re-join: "= 381 ." shares only "=" and "." one at a time.
    assert divergence_kind([381, 40, 77, 50], Y, 5, 4) == "fork"
    # A re-join outside the window does not count: at d = 0 with m = 2 the student's tokens
    # searched are positions 0 and 1 only, and "23 = 391" starts at 3.
    assert rejoin_position([99, 23, 40, 391], Y, 0, 2) is None


def test_runs_cut_by_the_end_do_not_count() -> None:
    # "= 381 ." vs the teacher's "= 391 .": after the number only "." is left, short of R = 3.
    assert rejoin_position([391, 50], Y, 5, 8) is None
    assert rejoin_position([41, 391, 50], Y, 4, 8) is None  # "is 391 ." vs "= 391 .": 2 tokens
    # The window ends before a full run ("times 23", then cut): no evidence of a re-join.
    assert rejoin_position([31, 23], Y, 2, 8) is None
    # A window of m tokens asks for runs of min(3, m - 1): of 1 for m = 2.
    assert rejoin_run(2) == 1 and rejoin_position([31, 23], Y, 2, 2) == 3
    with pytest.raises(ValueError):
        rejoin_position([31], Y, 2, 1)


def test_fork_matters_compares_the_prefixes_before_and_after() -> None:
    success = {0: True, 1: True, 2: False, 3: False}
    assert fork_matters(1, 4, success, student_success=False) is True  # before succeeds, after fails
    assert fork_matters(0, 4, success, student_success=False) is False  # after it still succeeds
    assert fork_matters(2, 4, success, student_success=False) is False  # already lost before it
    assert fork_matters(3, 4, success, student_success=False) is False
    assert fork_matters(3, 4, {3: True}, student_success=False) is True  # after = the whole response
    assert fork_matters(3, 4, {3: True}, student_success=True) is False
    assert fork_matters(1, 4, {1: True}, student_success=False) is None  # d + 1 not tried
