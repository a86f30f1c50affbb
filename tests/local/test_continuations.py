"""Continuations from every prefix against the naive per-prefix greedy loop."""

from __future__ import annotations

import pytest
from support import contexts, response
from vrollout.local import continuations
from vrollout.local.continuations import continuations_from_every_prefix, cut_at_eos, eos_ids
from vrollout.local.engine import replay
from vrollout.local.reference import naive_continuation


def naive_all(teacher, context, resp, k, vocab_size, positions=None):
    eos = eos_ids(teacher)
    positions = range(len(resp)) if positions is None else positions
    return [
        cut_at_eos(naive_continuation(teacher, context + resp[:t], k, vocab_size), eos) for t in positions
    ]


def teacher_like_response(tiny, context, n, swaps):
    """A response that follows the teacher's greedy choice except at `swaps`, where it takes
    another token (so agreements and divergences are both there, in known places)."""
    resp: list[int] = []
    while len(resp) < n:
        (token,) = naive_continuation(tiny.teacher, context + resp, 1, tiny.vocab_size)
        resp.append((token + 1) % tiny.vocab_size if len(resp) in swaps else token)
    return resp


@pytest.mark.parametrize("share", [True, False], ids=["shared", "every-branch"])
@pytest.mark.parametrize("masked", [False, True], ids=["branch-attention", "4d-mask"])
@pytest.mark.parametrize("k,chunk", [(1, 64), (4, 5), (8, 64)])
def test_continuations_equal_naive_greedy(tiny, k, chunk, masked, share, monkeypatch):
    """Both decoding paths: the branch attention (full-attention caches) and the shared cache
    with a 4-D mask (the path for sliding-window caches, forced here); with and without
    sharing the agreed stretches; blocks of 4 branches in the branch attention."""
    monkeypatch.setattr(continuations, "BLOCK", 4)
    if masked:
        monkeypatch.setattr(continuations, "_prefix_view", lambda cache, end: None)
    teacher = tiny.teacher
    _, t_ctx = contexts(tiny)
    resp = response(tiny, 23)
    got = continuations_from_every_prefix(
        teacher, t_ctx, resp, k, vocab_size=tiny.vocab_size, branch_chunk=chunk, share=share
    )
    assert got == naive_all(teacher, t_ctx, resp, k, tiny.vocab_size)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_agreed_stretches_are_shared_not_decoded(tiny, k):
    """Where the response takes the teacher's top-1, the continuation from t is response[t] and
    then the continuation from t+1: only the divergences (and the last position) are decoded,
    and every prefix still equals the naive greedy loop, subsets of positions included."""
    teacher = tiny.teacher
    _, t_ctx = contexts(tiny)
    swaps = {3, 4, 11, 19}
    resp = teacher_like_response(tiny, t_ctx, 24, swaps)
    decoded: list[int] = []
    real = continuations._decode

    def counting(model, shared, n, top1, positions, *args):
        decoded.extend(positions)
        return real(model, shared, n, top1, positions, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(continuations, "_decode", counting)
        got = continuations_from_every_prefix(teacher, t_ctx, resp, k, vocab_size=tiny.vocab_size)
    assert got == naive_all(teacher, t_ctx, resp, k, tiny.vocab_size)
    top1 = [naive_continuation(teacher, t_ctx + resp[:t], 1, tiny.vocab_size)[0] for t in range(len(resp))]
    divergences = {t for t in range(len(resp)) if resp[t] != top1[t]}
    assert divergences == swaps  # the construction holds on this model
    assert set(decoded) <= divergences | {len(resp) - 1}
    assert swaps <= set(decoded) and len(decoded) <= 5  # 24 branches without sharing
    # a subset of positions, as recovery asks for: each still equals naive
    some = [0, 5, 6, 12, 23]
    got = continuations_from_every_prefix(teacher, t_ctx, resp, k, vocab_size=tiny.vocab_size, positions=some)
    assert got == naive_all(teacher, t_ctx, resp, k, tiny.vocab_size, some)
    # nothing to decode: positions 0-2 agree with the teacher for k tokens or more (swaps at 3, 4)
    decoded.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(continuations, "_decode", counting)
        got = continuations_from_every_prefix(
            teacher, t_ctx, resp, 1, vocab_size=tiny.vocab_size, positions=[0, 1, 2]
        )
    assert decoded == [] and got == naive_all(teacher, t_ctx, resp, 1, tiny.vocab_size, [0, 1, 2])


def test_cut_at_eos():
    assert cut_at_eos([5, 2, 7], {2}) == [5, 2]
    assert cut_at_eos([5, 7], {2}) == [5, 7]


@pytest.mark.parametrize("same_context", [False, True], ids=["privileged", "same-context"])
def test_continuations_from_the_replays_pass_equal_naive(tiny, same_context):
    """The analysis path: the replay keeps the teacher's cache and top-1 ids, and the
    continuations decode from them without a teacher-forced pass of their own."""
    s_ctx, t_ctx = contexts(tiny)
    if same_context:
        t_ctx = s_ctx  # self-teacher on the same input: the student's pass is the teacher's
    resp = response(tiny, 19)
    result = replay(tiny, s_ctx, t_ctx, resp, keep_teacher_cache=True)
    assert result.teacher_cache is not None
    forced = (result.teacher_cache, result.teacher_top1_id)
    got = continuations_from_every_prefix(
        tiny.teacher, t_ctx, resp, 5, vocab_size=tiny.vocab_size, branch_chunk=7, forced=forced
    )
    eos = eos_ids(tiny.teacher)
    want = [
        cut_at_eos(naive_continuation(tiny.teacher, t_ctx + resp[:t], 5, tiny.vocab_size), eos)
        for t in range(len(resp))
    ]
    assert got == want
    assert replay(tiny, s_ctx, t_ctx, resp).teacher_cache is None  # kept only when asked for


def test_chunks_shrink_to_keep_attention_scores_bounded():
    assert continuations.chunk_for(512, heads=9, length=600, element_bytes=4) == 512  # the default model
    big = continuations.chunk_for(512, heads=32, length=8192, element_bytes=4)
    assert 16 <= big < 512 and 3 * 32 * 8192 * 4 * big <= continuations.SCORES_BYTES
    assert continuations.chunk_for(512, heads=64, length=10**6, element_bytes=4) == 16  # a floor
    assert continuations.chunk_for(5, heads=64, length=10**6, element_bytes=4) == 5  # asked for fewer
