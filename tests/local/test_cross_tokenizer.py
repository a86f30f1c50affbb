"""A teacher with another tokenizer (docs/metrics.md, "Teachers with another tokenizer"): the
alignment of two tokenizations, the cross-tokenizer replay against the exact path (a same-
tokenizer teacher forced through it) and against an independent float64 computation, and the
options that cannot be defined across vocabularies (tiny models)."""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import contexts, tiny_settings
from support.cross import cross_pair, forced_cross, sentencepiece_tokenizer
from support.tiny import tiny_pair, tiny_tokenizer
from vrollout.errors import BadTrajectory, ModelMismatch
from vrollout.pipeline.align import align, char_ends, decoder, shared_tokens, token_keys
from vrollout.pipeline.analyzer import Analyzer

ALPHABET = "abcdehlortw ,.\n\té☃😀"
TEXTS = st.text(alphabet=ALPHABET, min_size=1, max_size=40)
TOKENIZERS = (tiny_tokenizer(), sentencepiece_tokenizer())


@pytest.fixture(scope="module")
def pair():
    return cross_pair()


def spans_spell_the_text(a, s_tok, t_tok) -> None:
    """Spans tile the text and the response; each side's tokens in a span spell its text."""
    assert "".join(a.text[sp.start : sp.end] for sp in a.spans) == a.text
    assert [sp.student for sp in a.spans][0][0] == 0 and a.spans[-1].student[1] == len(a.student_ids)
    assert a.spans[-1].teacher[1] == len(a.teacher_ids)
    for prev, nxt in zip(a.spans, a.spans[1:], strict=False):
        assert (
            prev.end == nxt.start and prev.student[1] == nxt.student[0] and prev.teacher[1] == nxt.teacher[0]
        )
    for sp in a.spans:
        if sp.special:
            continue
        s_text = decoder(s_tok)(a.student_ids[: sp.student[1]])
        t_text = decoder(t_tok)(a.teacher_ids[: sp.teacher[1]])
        assert s_text.endswith(a.text[sp.start : sp.end]) and len(s_text) == sp.end
        assert t_text.endswith(a.text[sp.start : sp.end]) and len(t_text) == sp.end


@given(TEXTS)
@settings(max_examples=40, deadline=None)
def test_alignment_of_byte_level_and_sentencepiece(text):
    """Partial UTF-8 tokens on both sides (é, ☃, 😀 as bytes), '▁' vs 'Ġ' spaces: the spans tile
    the text and cut only where both sides' tokens end."""
    s_tok, t_tok = TOKENIZERS
    ids = s_tok(text, add_special_tokens=False)["input_ids"]
    a = align(s_tok, t_tok, ids, {s_tok.eos_token_id})
    assert a.text == text
    spans_spell_the_text(a, s_tok, t_tok)


def test_a_non_canonical_response_and_the_end_of_sequence():
    """A generated response need not be the tokenizer's own split: the bytes of 'the' one by one
    still align with the teacher's '▁the'; the student's end of sequence is the teacher's."""
    s_tok, t_tok = tiny_tokenizer(), sentencepiece_tokenizer()
    ids = [s_tok.convert_tokens_to_ids(c) for c in ["Ġ", "t", "h", "e"]] + [s_tok.eos_token_id]
    a = align(s_tok, t_tok, ids, {s_tok.eos_token_id})
    assert [(sp.student, sp.teacher) for sp in a.spans] == [((0, 4), (0, 1)), ((4, 5), (1, 2))]
    assert a.teacher_ids[-1] == t_tok.eos_token_id and a.spans[-1].special
    assert a.spans[0].differs and not a.spans[1].differs
    with pytest.raises(BadTrajectory, match="no counterpart in the teacher's vocabulary"):
        align(s_tok, t_tok, [s_tok.convert_tokens_to_ids("<|im_start|>")], {s_tok.eos_token_id})


def test_char_ends_mark_tokens_inside_a_character():
    tok = tiny_tokenizer()
    ids = tok("a😀b", add_special_tokens=False)["input_ids"]
    assert char_ends(decoder(tok), ids, "a😀b") == [1, None, None, None, 2, 3]


def test_shared_spellings_across_conventions():
    """'Ġthe' and '▁the' spell the same bytes; byte tokens match single bytes; specials match only
    a special of the same name."""
    s_tok, t_tok = tiny_tokenizer(), sentencepiece_tokenizer()
    s_keys, t_keys = token_keys(s_tok, len(s_tok)), token_keys(t_tok, len(t_tok))
    pairs = dict(zip(*shared_tokens(s_keys, t_keys), strict=True))
    assert pairs[s_tok.convert_tokens_to_ids("Ġth")] == t_tok.convert_tokens_to_ids("▁th")
    assert pairs[s_tok.convert_tokens_to_ids("Ã")] == t_tok.convert_tokens_to_ids("<0xC3>")
    assert s_tok.eos_token_id not in pairs


def test_the_pair_is_cross_tokenizer_only_where_allowed(pair):
    assert pair.cross_tokenizer and pair.describe()["teacher"]["vocab_size"] == len(sentencepiece_tokenizer())
    assert pair.describe()["student"]["vocab_size"] == len(tiny_tokenizer())
    from vrollout.models import pair_from_models

    with pytest.raises(ModelMismatch, match="different vocabularies"):
        pair_from_models(pair.student, pair.teacher, pair.teacher_template)


STEP_EXACT = ("teacher_logprob", "advantage", "student_logprob", "student_entropy", "teacher_entropy",
              "teacher_top1_id", "teacher_top1", "agree", "teacher_rank", "teacher_topk", "student_topk",
              "token_id", "token")  # fmt: skip


@functools.cache
def analyzers(seed: int) -> tuple[Analyzer, Analyzer]:
    """The exact path and the same pair forced through the cross-tokenizer path (no store)."""
    exact_pair = tiny_pair(teacher_seed=seed + 1)
    cfg = tiny_settings(Path(tempfile.mkdtemp(prefix="vr-cross-")))
    return Analyzer(exact_pair, cfg), Analyzer(forced_cross(exact_pair), cfg)


@given(TEXTS, st.integers(0, 2), st.booleans())
@settings(max_examples=12, deadline=None)
def test_a_same_tokenizer_teacher_forced_through_gives_the_exact_numbers(text, seed, eos):
    """Property: with one tokenizer the teacher reads the student's own ids; every span is a
    character (one token, or the bytes of one character) and at every boundary each number is
    the exact path's (KL and teacher mass up to float32 summation order); span sums are the
    exact path's sums."""
    exact, forced = analyzers(seed)
    tok = exact.pair.student.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    s_ctx, t_ctx = contexts(exact.pair)
    body = {"prompt_ids": s_ctx, "teacher_prompt_ids": t_ctx, "response_ids": ids, "top_k": 3}
    a, b = exact.analyze(body), forced.analyze(body)
    assert b["alignment"]["teacher_response_ids"] == ids
    for span in b["alignment"]["spans"]:
        (s0, s1), (t0, t1) = span["student"], span["teacher"]
        assert (s0, s1) == (t0, t1)
        for side in ("student_logprob", "teacher_logprob"):
            assert span[side] == math.fsum(x[side] for x in a["steps"][s0:s1]), side
        x, y = a["steps"][s0], b["steps"][s0]
        assert y["span_start"] is True
        for name in STEP_EXACT if s1 - s0 == 1 else STEP_EXACT[3:]:
            assert x[name] == y[name], name
        for name in ("reverse_kl", "forward_kl", "teacher_mass_on_student_topk"):
            assert y[name] == pytest.approx(x[name], rel=1e-4, abs=1e-5), name
    for x, y in zip(a["steps"], b["steps"], strict=True):
        assert (x["student_logprob"], x["student_entropy"], x["student_topk"]) == (
            y["student_logprob"], y["student_entropy"], y["student_topk"]
        )  # fmt: skip
    for name in ("student_logprob_total", "teacher_logprob_total", "advantage_total"):
        assert b["summary"][name] == pytest.approx(a["summary"][name], rel=1e-9, abs=1e-9)
    starts = [span["student"][0] for span in b["alignment"]["spans"]]
    assert b["summary"]["divergences"] == sum(not a["steps"][k]["agree"] for k in starts)
    assert b["virtual_rollout"]["token_ids"] == [a["virtual_rollout"]["token_ids"][k] for k in starts]


@torch.inference_mode()
def float64_span_logprobs(
    model, context: list[int], ids: list[int], spans: list[tuple[int, int]]
) -> list[float]:
    """Independent: the model's full forward in float64 over context + ids, log-softmax, summed."""
    m64 = model.model.to(torch.float64)
    try:
        logits = m64(input_ids=torch.tensor([context + ids])).logits[0].double()
    finally:
        model.model.to(torch.float32)
    logp = torch.log_softmax(logits[len(context) - 1 : -1], -1)
    per_token = logp.gather(1, torch.tensor(ids)[:, None])[:, 0].tolist()
    return [math.fsum(per_token[a:b]) for a, b in spans]


def test_another_tokenizer_against_float64(pair, tmp_path):
    """Per span, both models' log-probs of the span's text match an independent float64
    computation; the step attribution sums to them span by span; estimates are in range."""
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    a = analyzer.analyze(
        {"prompt": "Say hello", "response": "héllo the ☃ world, hello there", "privileged": "x"}
    )
    spans = a["alignment"]["spans"]
    assert any(s["differs"] for s in spans) and not all(s["differs"] for s in spans)
    assert (a["teacher"]["context_kind"], a["teacher"]["sibling"]) == ("privileged", None)
    s64 = float64_span_logprobs(
        pair.student, a["student"]["context_ids"], a["response_ids"], [s["student"] for s in spans]
    )
    t64 = float64_span_logprobs(
        pair.teacher,
        a["teacher"]["context_ids"],
        a["alignment"]["teacher_response_ids"],
        [s["teacher"] for s in spans],
    )
    for span, s_exp, t_exp in zip(spans, s64, t64, strict=True):
        assert span["student_logprob"] == pytest.approx(s_exp, abs=1e-4)
        assert span["teacher_logprob"] == pytest.approx(t_exp, abs=1e-4)
        steps = a["steps"][span["student"][0] : span["student"][1]]
        assert math.fsum(x["teacher_logprob"] for x in steps) == pytest.approx(
            span["teacher_logprob"], abs=1e-9
        )
        assert all(x["advantage"] == 0 for x in steps[:-1])
        assert steps[0]["reverse_kl"] >= 0 and 0 <= span["unmatched_teacher_mass"] <= 1
        assert all(x["reverse_kl"] == 0 and x["teacher_rank"] is None for x in steps[1:])
    assert a["summary"]["reverse_kl_estimate"] is True and a["alignment"]["estimated"]
    assert a["virtual_rollout"]["text"] == "".join(s["teacher_top1"] for s in spans)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"continuation_tokens": 4}, "continuation_tokens"),
        ({"recovery": True, "reference_answer": "x"}, "recovery"),
    ],
)
def test_options_that_need_one_vocabulary_are_a_clear_422(pair, tmp_path, extra, words):
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    with pytest.raises(BadTrajectory, match="cannot be defined across two vocabularies") as err:
        analyzer.prepare({"prompt": "hi", "response": "hello", **extra})
    assert words in str(err.value) and err.value.status == 422


def test_pedagogical_and_token_id_prompts_are_refused(pair, tmp_path):
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    with pytest.raises(BadTrajectory, match="a pedagogical rollout .* cannot be defined across"):
        analyzer.prepare_pedagogical({"prompt": "hi", "privileged": "x"})
    with pytest.raises(BadTrajectory, match="needs teacher_prompt_ids"):
        analyzer.prepare({"prompt_ids": [5, 6], "response_ids": [7, 8]})
    teacher_ids = pair.teacher.tokenizer("hi", add_special_tokens=False)["input_ids"]
    a = analyzer.analyze({"prompt_ids": [5, 6], "teacher_prompt_ids": teacher_ids, "response_ids": [70, 71]})
    assert a["teacher"]["context_ids"] == teacher_ids
