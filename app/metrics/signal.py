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


# Surface or fork (docs/metrics.md, "Surface or fork"): does the teacher's continuation from a
# divergence re-join the student's own tokens within the continuation window?
REJOIN_RUN = 3  # tokens in a row that must match
MIN_WINDOW = 2  # continuation_tokens below this: one token, nothing after it to re-join with


def rejoin_run(window: int) -> int:
    """The run length R for a continuation window of m tokens: min(REJOIN_RUN, m − 1), so that
    a short window can still re-join after its first token."""
    return min(REJOIN_RUN, window - 1)


def rejoin_position(continuation: list[int], response: list[int], d: int, window: int) -> int | None:
    """Where the teacher's continuation c from divergence d re-joins the response y, or None.

    With R = rejoin_run(window): the smallest j in [d, min(d + window, T)) such that
    y[j : j+R] == c[i : i+R] for some i, both runs whole (j + R ≤ len(y), i + R ≤ len(c)). A run
    cut short by the end of either text does not count: two shared tokens at the very end (a
    period, an end-of-sequence token) are no evidence of a rewording. `naive_rejoin` in
    tests/metrics/test_signal.py tries every (i, j) instead of matching R-grams.
    """
    run = rejoin_run(window)
    if run < 1:
        raise ValueError(f"a continuation window of {window} token(s) cannot re-join (at least {MIN_WINDOW})")
    grams = {tuple(continuation[i : i + run]) for i in range(len(continuation) - run + 1)}
    for j in range(d, min(d + window, len(response) - run + 1)):
        if tuple(response[j : j + run]) in grams:
            return j
    return None


def divergence_kind(continuation: list[int], response: list[int], d: int, window: int) -> str:
    """ "surface" when the continuation from divergence d re-joins the response, else "fork"."""
    return "fork" if rejoin_position(continuation, response, d, window) is None else "surface"


def fork_matters(d: int, tokens: int, success: dict[int, bool], student_success: bool) -> bool | None:
    """A fork at d matters when the teacher, taking over, reaches the answer from the prefix
    before it (recovery at t = d succeeds) and not from the prefix after it (t = d + 1 fails;
    for d + 1 = T the prefix is the whole response: the student's own success). None where a
    needed prefix was not tried. `success`: recovery position -> success."""
    after = student_success if d + 1 == tokens else success.get(d + 1)
    before = success.get(d)
    if before is None or after is None:
        return None
    return before and not after


def headline(summary: dict[str, Any]) -> tuple[str, list[str]]:
    """The analysis page's one-line answer, "N divergences: a surface, b forks (c that matter);
    the top 5% of tokens carry X% of the signal", with the parts that were not computed left
    out, and for each a sentence saying how to get it. Plain text: the caller escapes it."""
    n = summary["divergences"]
    text = f"{n} divergence{'' if n == 1 else 's'}"
    missing = []
    if summary.get("divergences_classified") is None:
        if n:
            missing.append(
                "Ask for continuations (continuation_tokens ≥ 2) to classify the divergences "
                "as surface or fork."
            )
    else:
        forks = summary["divergences_fork"]
        text += f": {summary['divergences_surface']} surface, {forks} fork{'' if forks == 1 else 's'}"
        if summary.get("forks_that_matter") is not None:
            text += f" ({summary['forks_that_matter']} that matter)"
        elif forks:
            missing.append("Add a reference answer and ask for recovery to find the forks that matter.")
    top5 = (summary.get("concentration") or {}).get("top_5pct")
    if top5 is not None:
        text += f"; the top 5% of tokens carry {100 * top5:.0f}% of the signal"
    elif summary.get("concentration") is None:
        missing.append("Analyse it again for the signal's concentration (this analysis predates it).")
    else:
        text += "; no signal: the reverse KL is 0 at every token"
    return text, missing
