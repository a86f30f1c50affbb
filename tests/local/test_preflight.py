"""Preflight (docs/metrics.md, "Preflight"): the context diff flags what differs outside the
privileged block, a self-teacher's noise floor is zero, the leak score counts copied n-grams
(tiny model: the mechanics; tests/local/test_preflight_real.py: the default model)."""

from __future__ import annotations

import copy

import pytest
from support import tiny_settings
from support.cross import cross_pair
from support.tiny import CHAT_TEMPLATE, tiny_pair
from vrollout.config import DEFAULT_TEACHER_TEMPLATE
from vrollout.models import LoadedModel, pair_from_models
from vrollout.notebook import Analysis
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.preflight import compact, job_preflight, leak_score, privileged_chars, words

LINE = {"prompt": "What is 2+2?", "response": "It is 4, the hello world", "privileged": "The answer is 4."}
SYSTEM = "<|im_start|>system\nYou are a careful teacher.<|im_end|>\n"


def teacher_with(pair, chat_template: str, template: str = DEFAULT_TEACHER_TEMPLATE, shared_model=True):
    """A pair whose teacher has the student's weights and vocabulary but `chat_template`."""
    tok = copy.deepcopy(pair.student.tokenizer)
    tok.chat_template = chat_template
    teacher = LoadedModel("tiny-teacher-template", "memory", pair.student.model, tok)
    return pair_from_models(pair.student, teacher, template)


def analyze(pair, tmp_path, line=LINE, **settings):
    return Analyzer(pair, tiny_settings(tmp_path, **settings)).analyze(line)


def test_same_template_differs_only_in_the_privileged_block(tiny, tmp_path):
    a = analyze(tiny, tmp_path)
    diff = a["preflight"]["context_diff"]
    assert diff["ok"] is True and diff["flags"] == [] and diff["skipped"] is None
    start, end = diff["privileged_range"]
    block = tiny.student.tokenizer.decode(a["teacher"]["context_ids"][start:end])
    assert "The answer is 4." in block
    assert a["summary"]["preflight_ok"] is True
    assert Analysis(a).preflight == a["preflight"]  # the notebook's view


def test_a_teacher_system_prompt_is_flagged(tmp_path):
    pair = teacher_with(tiny_pair(), SYSTEM + CHAT_TEMPLATE)
    a = analyze(pair, tmp_path)
    diff = a["preflight"]["context_diff"]
    assert diff["ok"] is False and diff["flags_total"] == 1
    flag = diff["flags"][0]
    assert flag["kind"] == "system_prompt"
    assert "You are a careful teacher." in flag["teacher_text"] and flag["student_text"] == ""
    assert flag["student_range"] == [0, 0] and flag["teacher_range"][0] == 0
    # the privileged block is still found, after the system turn
    assert diff["privileged_range"][0] > flag["teacher_range"][1]
    assert a["summary"]["preflight_ok"] is False


def test_a_special_token_outside_the_block_is_flagged(tmp_path):
    base = tiny_pair()
    pair = pair_from_models(base.student, None, "<|im_end|>{prompt}\n\n{privileged}")
    diff = analyze(pair, tmp_path)["preflight"]["context_diff"]
    assert [f["kind"] for f in diff["flags"]] == ["special_tokens"]
    assert diff["flags"][0]["teacher_text"] == "<|im_end|>"


def test_whitespace_only_differences_are_flagged(tmp_path):
    spaced = CHAT_TEMPLATE.replace("<|im_end|>\n{% endfor %}", "<|im_end|>\n\n{% endfor %}")
    pair = teacher_with(tiny_pair(), spaced)
    diff = analyze(pair, tmp_path)["preflight"]["context_diff"]
    assert diff["flags"] and {f["kind"] for f in diff["flags"]} == {"whitespace"}


def test_self_teacher_noise_floor_is_exactly_zero(tiny, tmp_path):
    """Shared weights given the student's own ids: the bare pass is the student's pass, read
    from the analysis's replay (no second pass); the next test runs it twice for real."""
    floor = analyze(tiny, tmp_path)["preflight"]["noise_floor"]
    assert floor["computed"] is True and floor["same_context"] is True
    assert floor["reused_replay"] is True
    assert floor["reverse_kl_mean"] == 0.0 and floor["reverse_kl_max"] == 0.0
    assert floor["reverse_kl_total"] == 0.0
    assert floor["max_abs_logprob_delta"] == 0.0 and floor["repeat_spread_max"] == 0.0
    assert floor["signal_reverse_kl_mean"] > 0  # the privileged info moved the teacher


def test_same_weights_in_a_second_model_object_give_zero_too(tmp_path):
    """Two passes (not one shared pass): the engine itself adds no noise on the CPU."""
    pair = teacher_with(tiny_pair(), CHAT_TEMPLATE)
    assert not pair.shared
    floor = analyze(pair, tmp_path)["preflight"]["noise_floor"]
    assert floor["same_context"] is True and floor["reused_replay"] is False
    assert floor["reverse_kl_max"] == 0.0 and floor["max_abs_logprob_delta"] == 0.0


def test_template_noise_shows_in_the_noise_floor(tmp_path):
    pair = teacher_with(tiny_pair(), SYSTEM + CHAT_TEMPLATE)
    floor = analyze(pair, tmp_path)["preflight"]["noise_floor"]
    assert floor["same_context"] is False and floor["reverse_kl_mean"] > 0


def test_another_teacher_has_a_model_gap(tmp_path):
    floor = analyze(tiny_pair(teacher_seed=3), tmp_path)["preflight"]["noise_floor"]
    assert floor["reverse_kl_mean"] > 0 and floor["max_abs_logprob_delta"] > 0
    assert floor["repeat_spread_max"] == 0.0  # the student's own request, repeated


def test_noise_floor_can_be_turned_off(tiny, tmp_path):
    off = analyze(tiny, tmp_path, {**LINE, "noise_floor": False})["preflight"]["noise_floor"]
    assert off["computed"] is False and "noise_floor" in off["skipped"]
    off = analyze(tiny, tmp_path, noise_floor=False)["preflight"]["noise_floor"]
    assert off["computed"] is False
    on = analyze(tiny, tmp_path, {**LINE, "noise_floor": True}, noise_floor=False)["preflight"]["noise_floor"]
    assert on["computed"] is True


def test_batched_lines_get_the_same_preflight(tiny, tmp_path):
    """A job's padded batch: the noise floor's replay is batched too, and equals each line's own
    run (the batch's student log-probs against the bare replay's: within 1e-5 on the CPU)."""
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    lines = [
        {**LINE, "response": "It is 4."},
        {**LINE, "response": "the hello the world, hello there"},
        {"prompt": "hi", "response": "hello the"},
    ]
    preps = [analyzer.prepare(x) for x in lines]
    batched = analyzer.run_batch(preps, [{} for _ in preps])
    for prep, b in zip(preps, batched, strict=True):
        alone = analyzer.run(prep, store=False)
        fb, fa = b["preflight"]["noise_floor"], alone["preflight"]["noise_floor"]
        # float32 matmuls of other batch shapes: measured up to 2e-6 nats here, never 0 by design
        assert fb["computed"] and fb["reverse_kl_max"] <= 1e-6
        assert fb["max_abs_logprob_delta"] <= 1e-5 and fb["repeat_spread_max"] <= 1e-5
        assert b["preflight"]["context_diff"] == alone["preflight"]["context_diff"]
        assert fa["reverse_kl_max"] == 0.0


def test_token_ids_take_the_largest_difference_as_the_block(tiny, tmp_path):
    tok = tiny.student.tokenizer
    s_ids = tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    t_ids = tok("<|im_start|>user\nhi\n\nthe hint is here<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    line = {"prompt_ids": s_ids, "teacher_prompt_ids": t_ids, "response_ids": tok("hello")["input_ids"]}
    diff = analyze(tiny, tmp_path, line)["preflight"]["context_diff"]
    assert diff["privileged_source"] == "largest_difference" and diff["ok"] is True


def test_privileged_chars_cover_the_template_text():
    text = "<|im_start|>user\nQ?\n\nReference: A.<|im_end|>\n"
    at = privileged_chars(text, "A.", "{prompt}\n\nReference: {privileged}")
    assert text[at[0] : at[1]] == "\n\nReference: A."
    at = privileged_chars("Hint: A.\n\nQ?", "A.", "Hint: {privileged}\n\n{prompt}")
    assert at == (0, len("Hint: A.\n\n"))
    assert privileged_chars("no such text", "A.", "{prompt} {privileged}") is None
    assert privileged_chars("anything", None, "{prompt} {privileged}") is None


def test_leak_score_verbatim_vs_hint():
    answer = "17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391, so the answer is 391."
    copying = leak_score(answer, "17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391", "17*23 = 381.", None)
    hinted = leak_score(
        "Split 23 into 20 + 3.", "17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391", "17*23 = 381.", None
    )
    assert copying["virtual_rollout"]["share"] == 1.0
    assert copying["virtual_rollout"]["longest_copied_run"] == len(
        words("17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391")
    )
    assert hinted["virtual_rollout"]["share"] < 0.2 and hinted["virtual_rollout"]["longest_copied_run"] <= 3
    assert copying["excess"] > hinted["excess"]
    assert leak_score(None, "x", "y", None) is None
    short = leak_score(answer, "391", "381", ["so the answer is 391 .", "nothing here at all"])
    assert short["virtual_rollout"]["share"] is None  # fewer words than n
    assert short["continuations"]["ngrams"] == 3 + 1 and short["continuations"]["copied"] == 3


def test_job_aggregate():
    def pf(ok, kinds, floor, leak):
        flags = [{"kind": k} for k in kinds]
        return {
            "context_diff": {"ok": ok, "flags": flags},
            "noise_floor": {
                "computed": floor is not None,
                "reverse_kl_mean": floor,
                "signal_reverse_kl_mean": 0.5,
            },
            "leak": None if leak is None else {"virtual_rollout": {"share": leak}, "excess": 0.0},
        }

    lines = [
        pf(True, [], 0.0, 0.1),
        pf(False, ["system_prompt", "whitespace"], 0.2, None),
        None,
        pf(False, ["whitespace"], None, 0.5),
    ]
    agg = job_preflight([compact(x) for x in lines])
    assert agg["lines"] == 4 and agg["lines_checked"] == 3 and agg["lines_flagged"] == 2
    assert agg["flag_kinds"] == {"system_prompt": 1, "whitespace": 2}
    assert agg["noise_floor_kl_mean"] == {"mean": pytest.approx(0.1), "max": 0.2, "lines": 2}
    assert agg["leak_share"] == {"mean": pytest.approx(0.3), "max": 0.5, "lines": 2}


def test_without_privileged_info_the_analysis_is_its_own_noise_floor(tmp_path):
    """No privileged info: the teacher's context is already the bare one, so its replay is reused
    (no second pass) and the noise floor is the analysis's own KL."""
    a = analyze(tiny_pair(teacher_seed=3), tmp_path, {"prompt": "hi", "response": "hello the world"})
    floor = a["preflight"]["noise_floor"]
    assert floor["reused_replay"] is True and floor["repeat_spread_max"] == 0.0
    assert floor["reverse_kl_mean"] == pytest.approx(a["summary"]["reverse_kl_mean"])
    assert a["preflight"]["leak"] is None and a["preflight"]["context_diff"]["ok"] is True


def test_another_tokenizer_skips_the_diff_and_the_floor_with_reasons(tmp_path):
    """A teacher with another vocabulary: its ids are not the student's, so the token diff and
    the per-token noise floor are skipped (each with its reason); the leak score still reads text."""
    a = analyze(cross_pair(), tmp_path, {**LINE, "privileged": "It is 4, the hello world"})
    pf = a["preflight"]
    assert pf["context_diff"]["ok"] is None and "another tokenizer" in pf["context_diff"]["skipped"]
    assert pf["noise_floor"]["computed"] is False and "another tokenizer" in pf["noise_floor"]["skipped"]
    assert pf["leak"]["student_response"]["share"] == 1.0
    assert a["summary"]["preflight_ok"] is None
