"""A conversation scored on the tiny model pair: every student token equals the naive float64
reference, every context token (a tool's answer) has no figures, the summaries count the
student's tokens only, and continuations and recovery stop at the end of the turn they start in.

The line's response_mask and turns are set on its contexts by hand (as `build_contexts` sets them
for a conversation), so that the scoring side is checked on exactly known token positions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from support import contexts, tiny_settings
from support.tiny import tiny_pair
from vrollout.local.continuations import eos_ids
from vrollout.local.reference import last_logprobs, naive_continuation, naive_step
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.digest import digest
from vrollout.pipeline.turns import continuation_limits
from vrollout.report.analysis_view import turns
from vrollout.report.dataset import steps_of
from vrollout.report.headline import headline
from vrollout.rules import cut_at_eos
from vrollout.schema.analysis import analysis_adapter

FIGURES = ("student_logprob", "teacher_logprob", "advantage", "reverse_kl", "forward_kl")
FIGURES += ("student_entropy", "teacher_entropy")
K = 4  # continuation tokens
TEMPLATES = Path(__file__).resolve().parents[1] / "support" / "templates"


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(teacher_seed=7)


def conversation(pair):
    """Response ids of: assistant turn (message 1, reasoning marked), a tool's answer (message 2,
    context), assistant turn (message 3); with its mask and turns."""
    tok = pair.student.tokenizer
    pieces = [
        ("<think>17*20 = 340</think>I'll call the calculator.<|im_end|>", 1, 1),
        ("\n<|im_start|>tool\n340 + 51 = 391<|im_end|>\n<|im_start|>assistant\n", 0, 2),
        ("So the total is 391.<|im_end|>", 1, 3),
    ]
    ids, mask, turns = [], [], []
    for text, scored, turn in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [scored] * len(piece)
        turns += [turn] * len(piece)
    return ids, mask, turns


def analyze(pair, tmp_path, mask, turns, **options):
    s_ctx, t_ctx = contexts(pair)
    response, _, _ = conversation(pair)
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    line = {"prompt_ids": s_ctx, "teacher_prompt_ids": t_ctx, "response_ids": response, **options}
    prep = analyzer.prepare(line)
    prep.ctx.response_mask, prep.ctx.turns = mask, turns
    return analyzer.run(prep, store=False), s_ctx, t_ctx, response, tmp_path


@pytest.fixture(scope="module")
def scored(pair, tmp_path_factory):
    """The conversation's analysis (no continuations): the analysis, its contexts, its response."""
    _, mask, turns = conversation(pair)
    return analyze(pair, tmp_path_factory.mktemp("conversation"), mask, turns)


def test_student_tokens_equal_the_naive_reference_and_context_tokens_have_none(pair, scored):
    response, mask, turns = conversation(pair)
    analysis, s_ctx, t_ctx, *_ = scored
    analysis_adapter().validate_python(analysis)
    assert analysis["response_mask"] == mask
    steps = analysis["steps"]
    for t, step in enumerate(steps):
        assert step["scored"] is bool(mask[t]) and step["turn"] == turns[t], t
        if not mask[t]:
            assert all(step[name] is None for name in (*FIGURES, "agree", "teacher_rank", "objectives"))
            assert step["teacher_topk"] == step["student_topk"] == [] and step["segment"] is None
            assert step["token_id"] == response[t]
            continue
        logp = last_logprobs(pair.student, s_ctx + response[:t], pair.vocab_size, torch.float64)
        logq = last_logprobs(pair.teacher, t_ctx + response[:t], pair.vocab_size, torch.float64)
        want = naive_step(logp, logq, response[t], 5)
        for name in FIGURES:
            assert math.isclose(step[name], want[name], rel_tol=1e-4, abs_tol=2e-4), (t, name)
        assert step["agree"] is want["agree"] and step["teacher_rank"] == want["teacher_rank"], t
    # the first turn's reasoning is marked; the second turn has no markers
    first = [s["segment"] for s in steps if s["turn"] == 1]
    assert first[0] == "thinking" and first[-1] == "answer" and "answer" in first
    assert all(s["segment"] is None for s in steps if s["turn"] == 3)


def test_summaries_count_the_student_tokens_only(pair, scored):
    response, mask, _ = conversation(pair)
    analysis = scored[0]
    scored = [s for s in analysis["steps"] if s["scored"]]
    summary = analysis["summary"]
    assert summary["tokens"] == sum(mask) < len(response)
    assert math.isclose(summary["reverse_kl_total"], math.fsum(s["reverse_kl"] for s in scored))
    assert summary["divergences"] == sum(1 for s in scored if not s["agree"])
    assert summary["objectives"]["k1"]["total"] == pytest.approx(
        math.fsum(s["objectives"]["k1"] for s in scored)
    )
    assert sum(q["tokens"] for q in summary["quadrants"].values() if isinstance(q, dict)) == pytest.approx(1)
    assert [t["message_index"] for t in summary["turns"]] == [1, 3]
    for turn in summary["turns"]:
        mine = [s for s in scored if s["turn"] == turn["message_index"]]
        assert turn["tokens"] == len(mine)
        assert math.isclose(turn["reverse_kl"], math.fsum(s["reverse_kl"] for s in mine))
        assert turn["divergences"] == sum(1 for s in mine if not s["agree"])
    floor = analysis["preflight"]["noise_floor"]  # the preflight's too: the student's tokens
    assert floor["tokens"] == sum(mask)
    assert floor["signal_reverse_kl_mean"] == pytest.approx(summary["reverse_kl_mean"])
    thinking = summary["segments"]["thinking"]
    assert thinking["tokens"] == sum(1 for s in scored if s["segment"] == "thinking") > 0
    assert summary["segments"]["answer"]["tokens"] == sum(1 for s in scored if s["segment"] == "answer")


def test_the_digest_and_the_headline_read_the_student_tokens_and_both_parts(pair, scored):
    _, mask, _ = conversation(pair)
    analysis = scored[0]
    found = digest(analysis)
    assert sum(found["kl_bins"]) == sum(mask) and found["tokens"] == sum(mask)
    thinking = analysis["summary"]["segments"]["thinking"]
    assert found["segments"]["thinking"]["reverse_kl_mean"] == thinking["reverse_kl_mean"]
    rows = {row["measure"]: row for row in headline([found])["rows"]}
    assert rows["thinking_reverse_kl_mean"]["cells"]["all"]["median"] == thinking["reverse_kl_mean"]
    assert "answer_divergences_per_100_tokens" in rows
    table = steps_of(analysis)  # the step table of exports (steps.parquet)
    assert [row["scored"] for row in table] == [bool(m) for m in mask]
    assert all(row["reverse_kl"] is None and row["turn"] == 2 for row in table if not row["scored"])


def test_continuations_and_recovery_stop_at_the_end_of_their_turn(pair, tmp_path):
    response, mask, turns = conversation(pair)
    options = {"continuation_tokens": K, "reference_answer": "391", "recovery": True}
    analysis, _, t_ctx, *_ = analyze(pair, tmp_path, mask, turns, **options, recovery_max_new_tokens=K)
    eos = eos_ids(pair.teacher)
    limits = continuation_limits([bool(m) for m in mask])
    assert limits[0] is not None and limits[-1] is None  # the first turn is capped, the last is not
    for t, step in enumerate(analysis["steps"]):
        if not mask[t]:
            assert step["teacher_continuation"] is None  # none starts at a tool's token
            continue
        naive = cut_at_eos(naive_continuation(pair.teacher, t_ctx + response[:t], K, pair.vocab_size), eos)
        want = naive if limits[t] is None else naive[: limits[t]]
        assert step["teacher_continuation"]["token_ids"] == want, t
    decode = pair.teacher.tokenizer.decode
    points = analysis["recovery"]["points"]
    assert [p["position"] for p in points] == [t for t in range(len(response)) if mask[t]]
    for point in points:
        t = point["position"]
        naive = cut_at_eos(naive_continuation(pair.teacher, t_ctx + response[:t], K, pair.vocab_size), eos)
        want = naive if limits[t] is None else naive[: limits[t]]
        assert point["continuation"] == decode(want, skip_special_tokens=False), t


def test_a_single_turn_keeps_its_analysis(pair, tmp_path):
    """A mask of all ones is today's analysis: the same steps (plus scored/turn/segment) and summary."""
    response, _, _ = conversation(pair)
    ones, *_ = analyze(pair, tmp_path, [1] * len(response), [1] * len(response), continuation_tokens=K)
    plain, *_ = analyze(pair, tmp_path, None, None, continuation_tokens=K)
    assert all(s["scored"] for s in ones["steps"]) and plain["response_mask"] == [1] * len(response)
    drop = ("turn", "segment")
    assert [{k: v for k, v in s.items() if k not in drop} for s in ones["steps"]] == [
        {k: v for k, v in s.items() if k not in drop} for s in plain["steps"]
    ]
    same = {k: v for k, v in ones["summary"].items() if k not in ("turns", "segments")}
    assert same == {k: v for k, v in plain["summary"].items() if k not in ("turns", "segments")}
    assert plain["summary"]["turns"] is None and ones["summary"]["turns"][0]["tokens"] == len(response)


def test_a_conversation_with_tool_calls_and_reasoning_is_scored_turn_by_turn(tmp_path):
    """From the line as a framework writes it (Qwen3's template on the tiny tokenizer: tool calls,
    reasoning_content rendered as <think>): the steps are scored where the placed mask says, each
    assistant turn's reasoning is its thinking, and the verdict reads the final answer."""
    pair = tiny_pair(teacher_seed=7)
    pair.student.tokenizer.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 340, "b": 51}}}
    tools = [{"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {}}}]
    line = {
        "messages": [
            {"role": "user", "content": "What is 17*23?"},
            {"role": "assistant", "content": "", "reasoning_content": "340 + 51", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "391"},
            {"role": "assistant", "content": "It is 391.", "reasoning_content": "the tool says 391"},
        ],
        "tools": tools,
        "reference_answer": "391",
    }
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    prep = analyzer.prepare(line)
    analysis = analyzer.run(prep, store=False)
    steps = analysis["steps"]
    assert analysis["response_mask"] == prep.ctx.response_mask and 0 in prep.ctx.response_mask
    assert [s["scored"] for s in steps] == [bool(m) for m in prep.ctx.response_mask]
    assert [s["turn"] for s in steps] == prep.ctx.turns
    assert [t["message_index"] for t in analysis["summary"]["turns"]] == [1, 3]
    for index in (1, 3):
        turn = [s for s in steps if s["turn"] == index and s["scored"]]
        text = "".join(s["token"] for s in turn if s["segment"] == "thinking")
        assert text.startswith("<think>") and text.rstrip().endswith("</think>"), text
    last = "".join(s["token"] for s in steps if s["turn"] == 3 and s["segment"] == "answer")
    assert "It is 391." in last
    assert all(s["segment"] is None and s["reverse_kl"] is None for s in steps if not s["scored"])
    assert analysis["verdict"]["correct"] is True  # "It is 391.", not the tool's turn


def test_a_token_level_line_scores_its_masked_in_tokens_only(pair, scored):
    """verl's shape: prompt_ids, response_ids and response_mask, no messages: the same numbers as
    the conversation placed by hand, with no turns known."""
    response, mask, _ = conversation(pair)
    s_ctx, t_ctx = contexts(pair)
    line = {"prompt_ids": s_ctx, "teacher_prompt_ids": t_ctx, "response_ids": response, "response_mask": mask}
    with_turns = scored[0]
    analysis = Analyzer(pair, tiny_settings(scored[4])).analyze(line)
    assert [s["scored"] for s in analysis["steps"]] == [bool(m) for m in mask]
    assert all(s["turn"] is None for s in analysis["steps"]) and analysis["summary"]["turns"] is None
    for got, want in zip(analysis["steps"], with_turns["steps"], strict=True):
        assert {k: v for k, v in got.items() if k != "turn"} == {k: v for k, v in want.items() if k != "turn"}
    assert analysis["summary"]["tokens"] == sum(mask)


def test_a_self_teachers_conversation_with_privileged_info_gets_its_noise_floor(tmp_path):
    """One set of weights (the default set-up): the bare teacher's replay is read from the
    student's pass, and the floor is taken over the student's tokens of every turn (it once
    failed on the fields that replay leaves empty)."""
    analyzer = Analyzer(tiny_pair(), tiny_settings(tmp_path))
    messages = [
        {"role": "user", "content": "What is 17*20?"},
        {"role": "assistant", "content": "17*20 = 340."},
        {"role": "user", "content": "And 17*23?"},
        {"role": "assistant", "content": "17*23 = 381."},
    ]
    analysis = analyzer.analyze({"messages": messages, "privileged": "17*23 = 391"})
    floor = analysis["preflight"]["noise_floor"]
    assert floor["computed"] is True and floor["reverse_kl_mean"] == 0.0
    assert [t["message_index"] for t in analysis["summary"]["turns"]] == [1, 3]
    # The messages are kept: the page names each turn's role from them.
    assert analysis["trajectory"]["conversation"] == messages
    roles = {(t["turn"], t["role"], t["scored"]) for t in turns(analysis)}
    assert {(1, "assistant", True), (2, "user", False), (3, "assistant", True)} <= roles
    analysis_adapter().validate_python(analysis)
