"""How the teacher's signal is spread over a trajectory's tokens (docs/metrics.md, "Signal
concentration"): the share carried by the largest few, the share of tokens that carries 80%,
the Gini coefficient and the Lorenz curve. Pure arithmetic on lists of non-negative numbers; no
torch, no HTTP.
"""

from __future__ import annotations

import math
from typing import Any

TOP_SHARES = {"top_1pct": 1, "top_5pct": 5, "top_10pct": 10, "top_20pct": 20}
MASS_TARGET = 0.8  # tokens_for_80pct


def top_count(percent: int, n: int) -> int:
    """ceil(percent/100 · n) tokens, at least one (integer arithmetic: no float rounding)."""
    return max(1, -(-percent * n // 100))


def concentration(values: list[float]) -> dict[str, Any]:
    """`summary.concentration` of per-step values k_1..k_T (reverse KL, or |advantage|).

    top_Xpct = (sum of the ceil(X/100·T) largest) / (sum of all); tokens_for_80pct = the smallest
    n/T such that the n largest carry at least 80% of the total; gini = Σ_i Σ_j |k_i − k_j| /
    (2 T Σ k), computed from the sorted values as Σ_i (2i − T − 1) k_(i) / (T Σ k). Every field is
    null when the total is 0 (nothing to share out), including for an empty trajectory.
    """
    n = len(values)
    total = math.fsum(values)
    if n == 0 or total <= 0:
        return {**dict.fromkeys(TOP_SHARES), "tokens_for_80pct": None, "gini": None}
    largest = sorted(values, reverse=True)
    prefix = [0.0]
    for v in largest:
        prefix.append(prefix[-1] + v)
    out: dict[str, Any] = {name: prefix[top_count(pct, n)] / total for name, pct in TOP_SHARES.items()}
    needed = next(i for i in range(1, n + 1) if prefix[i] >= MASS_TARGET * total or i == n)
    out["tokens_for_80pct"] = needed / n
    ascending = largest[::-1]
    out["gini"] = math.fsum((2 * i - n - 1) * v for i, v in enumerate(ascending, start=1)) / (n * total)
    return out


def lorenz(values: list[float], points: int = 101) -> dict[str, list[float]] | None:
    """The curve drawn in the chart: x = share of tokens (largest first), y = share of the total
    they carry, at `points` evenly spaced shares (each read off at ceil(x·T) tokens). None when
    the total is 0."""
    n, total = len(values), math.fsum(values)
    if n == 0 or total <= 0:
        return None
    largest = sorted(values, reverse=True)
    prefix = [0.0]
    for v in largest:
        prefix.append(prefix[-1] + v)
    xs = [i / (points - 1) for i in range(points)]
    return {"x": xs, "y": [prefix[min(n, math.ceil(x * n - 1e-9))] / total for x in xs]}
