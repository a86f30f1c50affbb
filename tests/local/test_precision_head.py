"""fp32 logits from reduced-precision models (issue #29): the head's product in float32, the
start-up head check's tolerance scaled by dtype, continuation attention in float32, and batch
and chunk sizes that follow a CUDA device's free memory (CPU values unchanged)."""

from __future__ import annotations

import torch
from support.tiny import tiny_pair
from vrollout.local import engine, head
from vrollout.local.continuations import BranchBlocks, branch_attention, continuations_from_every_prefix
from vrollout.local.reference import naive_continuation
from vrollout.local.sizing import MAX_CHUNK, Sizes, fitted_sizes


def test_a_bf16_models_head_logits_are_an_fp32_product_of_its_bf16_hidden_states(monkeypatch):
    pair = tiny_pair(torch.bfloat16)
    model = pair.student
    hidden = engine.final_hidden(model, [1, 5, 40, 41, 42, 7, 9, 60])  # (L, H) bf16
    assert hidden.dtype == torch.bfloat16
    weight = model.model.get_output_embeddings().weight.detach()
    want = hidden.float() @ weight.float().t()  # (L, V) float32
    monkeypatch.setattr(head, "HEAD_BLOCK", 64)  # several blocks of the vocabulary
    got = engine.head_logits(model, hidden, pair.vocab_size)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want[:, : pair.vocab_size], atol=1e-5, rtol=1e-6)
    own = model.model.get_output_embeddings()(hidden).detach().float()  # the model's bf16 logits
    assert float((own - want).abs().max()) > 1e-3  # which the engine no longer uses


def test_the_head_check_accepts_a_bf16_model_and_still_refuses_another_head():
    pair = tiny_pair(torch.bfloat16)
    model = pair.student
    engine.check_head(model, pair.vocab_size)  # the fp32 product is within a few bf16 steps
    full = model.model(input_ids=torch.tensor([[1, 2, 3, 4, 5]])).logits[0].float()
    ours = engine.head_logits(model, engine.final_hidden(model, [1, 2, 3, 4, 5]), pair.vocab_size)
    assert not torch.allclose(full, ours, atol=1e-3, rtol=1e-3)  # the float32 tolerance would refuse it
    model.model.config.final_logit_softcapping = 0.5  # a head that is not the plain projection
    try:
        engine.check_head(model, pair.vocab_size)
    except RuntimeError as exc:
        assert "not a plain projection" in str(exc)
    else:
        raise AssertionError("a soft-capped head passed the check")


def test_continuation_attention_runs_in_float32_for_bf16_inputs():
    torch.manual_seed(0)
    H, Hkv, B, d, P, steps = 4, 2, 6, 16, 20, 2
    starts = torch.tensor([3, 5, 8, 12, 15, 20])
    query = torch.randn(1, H, B, d).to(torch.bfloat16)
    key = (4 * torch.randn(1, Hkv, P + steps * B, d)).to(torch.bfloat16)
    value = torch.randn(1, Hkv, P + steps * B, d).to(torch.bfloat16)
    blocks = BranchBlocks.build(starts, H // Hkv, torch.bfloat16, block=4)
    got, _ = branch_attention(None, query, key, value, None, 0.25, branch_blocks=blocks)
    want, _ = branch_attention(
        None, query.float(), key.float(), value.float(), None, 0.25, branch_blocks=blocks
    )
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want.to(torch.bfloat16))  # the float32 result, rounded once


def test_bf16_continuations_equal_the_naive_ones():
    pair = tiny_pair(torch.bfloat16)
    teacher, context, response = pair.teacher, [1, 50, 60, 70], [80, 81, 82, 83, 84, 85]
    got = continuations_from_every_prefix(
        teacher, context, response, 3, vocab_size=pair.vocab_size, share=False
    )
    for t, row in enumerate(got):
        want = naive_continuation(teacher, context + response[:t], 3, pair.vocab_size)
        assert row[:1] == want[:1], t  # the first token is the forced pass's top-1 in both


DEFAULTS = Sizes(chunk_size=256, batch_tokens=4096, batch_max_sequence=160)


def test_the_sizes_stay_the_settings_off_cuda():
    assert fitted_sizes(DEFAULTS, None, vocab=152064, hidden=3584, element_bytes=2) == DEFAULTS


def test_the_sizes_follow_a_cuda_devices_free_memory():
    gib = 2**30
    big = fitted_sizes(DEFAULTS, 16 * gib, vocab=152064, hidden=3584, element_bytes=2)
    assert big.chunk_size == 16 * gib // 4 // (8 * 152064 * 4) and big.chunk_size > 256
    assert (
        big.batch_tokens == 16 * gib // 4 // (24 * 3584 * 2)
        and big.batch_max_sequence == big.batch_tokens // 4
    )
    small = fitted_sizes(DEFAULTS, gib // 4, vocab=152064, hidden=3584, element_bytes=2)
    assert small == DEFAULTS  # never below the settings' values
    huge = fitted_sizes(DEFAULTS, 10**15, vocab=49152, hidden=576, element_bytes=2)
    assert huge.chunk_size == MAX_CHUNK and huge.batch_tokens == 65536
    kept = fitted_sizes(DEFAULTS, 16 * gib, 152064, 3584, 2, explicit=frozenset({"chunk_size"}))
    assert kept.chunk_size == 256 and kept.batch_tokens == big.batch_tokens
