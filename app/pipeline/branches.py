"""Which continuations must be decoded, and how the others follow from them: the rule both
backends use for the teacher's continuations from every prefix (`local.continuations` decodes
the roots on one shared cache, the vLLM backend asks its servers for them). Pure functions over
token ids: no torch, no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

from vrollout.rules import cut_at_eos


def next_divergence(response: list[int], top1: list[int]) -> list[int]:
    """For each t: the first position d >= t where the response leaves the teacher's top-1
    (response[d] != top1[d]), or T-1 where it never does."""
    T = len(response)
    nxt = [T - 1] * T
    for t in range(T - 2, -1, -1):
        nxt[t] = t if response[t] != top1[t] else nxt[t + 1]
    return nxt


def shared_roots(nxt: list[int], positions: list[int], k: int) -> list[int]:
    """The positions whose continuations must be decoded so that those at `positions` follow,
    given `nxt = next_divergence(response, top1)`.

    Greedy decoding is a function of the prefix. Where the student took the teacher's top-1
    (response[t] == top1[t]), the teacher's continuation from t starts with response[t] and then
    continues exactly as its continuation from t+1 does: same prefix, same greedy choice. So the
    continuation from t is response[t:d] + the continuation from d, d = nxt[t] the next
    divergence, and only the divergences (and the last position) within k tokens of a wanted
    position are decoded. A trajectory the teacher agrees with costs almost nothing; one that
    leaves the teacher at every token decodes every branch."""
    return sorted({nxt[t] for t in positions if nxt[t] - t < k})


def from_divergences(
    decode: Callable[[list[int]], list[list[int]]],
    response: list[int],
    top1: list[int],
    positions: list[int],
    k: int,
    eos: set[int],
) -> list[list[int]]:
    """The continuations from `positions`, decoding (`decode(roots)`, k tokens from each root,
    in order) only the roots `shared_roots` names. The continuation from t is the agreed response
    tokens up to the next divergence d, then the continuation decoded at d: k tokens in all, cut
    after the first end-of-sequence token."""
    nxt = next_divergence(response, top1)
    roots = shared_roots(nxt, positions, k)
    decoded = dict(zip(roots, decode(roots), strict=True))
    results = []
    for t in positions:
        d = nxt[t]
        row = response[t : t + k] if d - t >= k else response[t:d] + decoded[d][: k - (d - t)]
        results.append(cut_at_eos(row, eos))
    return results
