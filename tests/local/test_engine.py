"""The engine against the naive per-prefix reference (local/reference.py), on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from support import contexts, response
from support.tiny import tiny_pair
from vrollout.local.engine import generate, replay, replay_batch
from vrollout.local.metrics import STEP_FIELDS as FLOAT_FIELDS
from vrollout.local.metrics import step_stats
from vrollout.local.reference import naive_replay, naive_step
from vrollout.pipeline.assembly import summarize

TOL = {torch.float32: dict(atol=2e-4, rtol=1e-4), torch.bfloat16: dict(atol=0.15, rtol=0.05)}


def assert_matches_reference(result, ref, dtype):
    mass = "teacher_mass_on_student_topk"
    for name in (*FLOAT_FIELDS, mass):
        values = result.teacher_mass_on_student_topk() if name == mass else getattr(result, name)
        got = torch.tensor(values, dtype=torch.float64)
        want = torch.tensor([s[name] for s in ref], dtype=torch.float64)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}")
    for t, step in enumerate(ref):
        # A discrete field may flip only where the teacher's top two are tied within rounding.
        if dtype == torch.float32 or step["teacher_margin"] > 0.3:
            assert result.teacher_top1_id[t] == step["teacher_top1_id"], t
            if dtype == torch.float32:
                assert result.teacher_rank[t] == step["teacher_rank"], t
                assert (
                    result.teacher_topk_ids[t] == step["teacher_topk_ids"][: len(result.teacher_topk_ids[t])]
                )
                assert (
                    result.student_topk_ids[t] == step["student_topk_ids"][: len(result.student_topk_ids[t])]
                )
    if dtype == torch.float32:
        got = torch.tensor(result.teacher_topk_logprobs)
        want = torch.tensor([s["teacher_topk_logprobs"][: got.shape[1]] for s in ref])
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("separate_teacher", [False, True], ids=["self-teacher", "separate-teacher"])
def test_replay_equals_naive_reference(dtype, separate_teacher):
    pair = tiny_pair(dtype, teacher_seed=7 if separate_teacher else None)
    s_ctx, t_ctx = contexts(pair)
    resp = response(pair, 45)  # longer than several chunks of 16
    result = replay(pair, s_ctx, t_ctx, resp, top_k=5, chunk_size=16)
    ref = naive_replay(pair, s_ctx, t_ctx, resp, top_k=5)
    assert len(result.reverse_kl) == len(resp)
    assert_matches_reference(result, ref, dtype)


def test_chunk_size_does_not_change_results(tiny):
    s_ctx, t_ctx = contexts(tiny)
    resp = response(tiny, 40)
    a = replay(tiny, s_ctx, t_ctx, resp, chunk_size=1)
    b = replay(tiny, s_ctx, t_ctx, resp, chunk_size=1000)
    torch.testing.assert_close(torch.tensor(a.reverse_kl), torch.tensor(b.reverse_kl))
    assert a.teacher_top1_id == b.teacher_top1_id


def test_identical_contexts_give_zero_kl_full_agreement(tiny):
    """Property: same weights, same context, the student's own greedy response."""
    s_ctx, _ = contexts(tiny)
    resp = generate(tiny.student, s_ctx, max_new_tokens=30)
    result = replay(tiny, s_ctx, list(s_ctx), resp, chunk_size=7)
    assert all(abs(v) < 1e-6 for v in result.reverse_kl + result.forward_kl)
    assert result.teacher_top1_id == resp
    assert result.teacher_rank == [1] * len(resp)
    assert result.student_logprob == result.teacher_logprob  # advantage exactly 0


def test_step_stats_random_logits_over_dtypes():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        s = (torch.randn(6, 50) * 3).to(dtype)
        t = (torch.randn(6, 50) * 3).to(dtype)
        y = torch.randint(0, 50, (6,))
        stats = step_stats(s, t, y, top_k=3)
        for c in range(6):
            ref = naive_step(
                torch.log_softmax(s[c].float(), -1), torch.log_softmax(t[c].float(), -1), int(y[c]), 3
            )
            for name in FLOAT_FIELDS:
                torch.testing.assert_close(getattr(stats, name)[c].item(), ref[name], atol=1e-5, rtol=1e-5)
            mass = stats.teacher_logprob_at_student_topk[c].exp().sum().item()
            torch.testing.assert_close(mass, ref["teacher_mass_on_student_topk"], atol=1e-5, rtol=1e-5)
            assert stats.teacher_rank[c].item() == ref["teacher_rank"]
            assert stats.teacher_top1_id[c].item() == ref["teacher_top1_id"]
        assert s.dtype == dtype  # inputs are not overwritten by default


@pytest.mark.parametrize("top_k", [0, 1, 4, 50])
def test_teacher_mass_on_student_topk_equals_its_definition(top_k):
    """log q at the student's top-k ids, whose exps sum to Σ_{v ∈ student top-k} q(v): 0 for an
    empty top-k, 1 when the top-k is the whole vocabulary, the naive sum in between."""
    torch.manual_seed(1)
    s, t = torch.randn(5, 50) * 2, torch.randn(5, 50) * 2
    stats = step_stats(s, t, torch.zeros(5, dtype=torch.long), top_k=top_k)
    q = torch.softmax(t, -1)
    mass = stats.teacher_logprob_at_student_topk.exp().sum(-1)  # (5,)
    for c in range(5):
        ids = torch.topk(torch.log_softmax(s[c], -1), top_k).indices
        assert stats.student_topk_ids[c].tolist() == ids.tolist()
        torch.testing.assert_close(mass[c].item(), q[c, ids].sum().item(), atol=1e-6, rtol=1e-6)
    assert stats.teacher_logprob_at_student_topk.shape == (5, top_k)
    if top_k == 50:
        torch.testing.assert_close(mass, torch.ones(5), atol=1e-5, rtol=0)


def test_generation_is_seeded(tiny):
    s_ctx, _ = contexts(tiny)
    a = generate(tiny.student, s_ctx, max_new_tokens=20, temperature=1.0, seed=3)
    b = generate(tiny.student, s_ctx, max_new_tokens=20, temperature=1.0, seed=3)
    c = generate(tiny.student, s_ctx, max_new_tokens=20, temperature=1.0, seed=4)
    assert a == b
    assert a != c


def test_summary_counts():
    steps = [
        {"position": i, "agree": a, "reverse_kl": r, "forward_kl": 0.0, "advantage": -r,
         "student_logprob": -1.0, "teacher_logprob": -1.0 - r}
        for i, (a, r) in enumerate([(True, 0.1), (False, 0.5), (True, 0.0), (False, 0.4)])
    ]  # fmt: skip
    s = summarize(steps)
    assert s["tokens"] == 4 and s["divergences"] == 2 and s["first_divergence"] == 1
    assert s["agreement_rate"] == 0.5
    assert s["reverse_kl_total"] == pytest.approx(1.0)
    assert s["reverse_kl_share_at_divergences"] == pytest.approx(0.9)


@pytest.mark.parametrize("separate_teacher", [False, True], ids=["self-teacher", "separate-teacher"])
def test_batch_equals_one_by_one(separate_teacher):
    pair = tiny_pair(teacher_seed=7 if separate_teacher else None)
    s_ctx, t_ctx = contexts(pair)
    items = [(s_ctx, t_ctx, response(pair, n)) for n in (3, 40, 17, 1)]
    items.append((s_ctx, list(s_ctx), response(pair, 9)))  # a line without privileged info
    batched = replay_batch(pair, items, top_k=4, chunk_size=16)
    for (s, t, r), got in zip(items, batched, strict=True):
        want = replay(pair, s, t, r, top_k=4, chunk_size=16)
        for name in FLOAT_FIELDS:
            torch.testing.assert_close(
                torch.tensor(getattr(got, name)), torch.tensor(getattr(want, name)), atol=1e-5, rtol=1e-5
            )
        assert got.teacher_top1_id == want.teacher_top1_id and got.teacher_rank == want.teacher_rank
        assert got.teacher_topk_ids == want.teacher_topk_ids
