"""Continuations from every prefix against the naive per-prefix greedy loop."""

from __future__ import annotations

import pytest
from test_engine import contexts, response

from app import continuations
from app.continuations import continuations_from_every_prefix, cut_at_eos, eos_ids
from app.engine import replay
from app.reference import naive_continuation


@pytest.mark.parametrize("masked", [False, True], ids=["branch-attention", "4d-mask"])
@pytest.mark.parametrize("k,chunk", [(1, 64), (4, 5), (8, 64)])
def test_continuations_equal_naive_greedy(tiny, k, chunk, masked, monkeypatch):
    """Both decoding paths: the branch attention (full-attention caches) and the shared cache
    with a 4-D mask (the path for sliding-window caches, forced here)."""
    if masked:
        monkeypatch.setattr(continuations, "_prefix_view", lambda cache, end: None)
    teacher = tiny.teacher
    _, t_ctx = contexts(tiny)
    resp = response(tiny, 23)
    got = continuations_from_every_prefix(
        teacher, t_ctx, resp, k, vocab_size=tiny.vocab_size, branch_chunk=chunk
    )
    eos = eos_ids(teacher)
    want = [
        cut_at_eos(naive_continuation(teacher, t_ctx + resp[:t], k, tiny.vocab_size), eos)
        for t in range(len(resp))
    ]
    assert got == want


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
