"""The continuation roots both backends decode (pipeline/branches.py)."""

from __future__ import annotations

from vrollout.pipeline.branches import from_divergences, next_divergence, shared_roots


def test_shared_roots():
    resp, top1 = [1, 2, 3, 4, 5, 6], [1, 9, 3, 4, 5, 6]  # leaves the teacher at 1 only
    nxt = next_divergence(resp, top1)
    assert nxt == [1, 1, 5, 5, 5, 5]
    assert shared_roots(nxt, list(range(6)), k=2) == [1, 5]
    assert shared_roots(nxt, [2], k=2) == []  # 3, 4 are all it needs
    assert shared_roots(nxt, [2], k=4) == [5]


def test_from_divergences_decodes_only_the_roots():
    resp, top1 = [1, 2, 3, 4, 5, 6], [1, 9, 3, 4, 5, 6]
    asked = []

    def decode(roots):
        asked.extend(roots)
        return [[100 + r, 200 + r] for r in roots]

    got = from_divergences(decode, resp, top1, [0, 2], k=2, eos=set())
    assert asked == [1]  # from 2 the response agrees with the teacher for 2 tokens: nothing to decode
    assert got == [[1, 101], [3, 4]]
