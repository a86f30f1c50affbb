"""The student's turns (pipeline/turns.py): scored flags, where continuations stop, summary.turns,
and summaries that count scored steps only (pipeline/assembly.py)."""

from __future__ import annotations

import math

from vrollout.pipeline.assembly import summarize, summary_parts
from vrollout.pipeline.recovery import turn_continuations
from vrollout.pipeline.turns import (
    continuation_limits,
    scored_flags,
    turn_ends,
    turn_keys,
    turn_summaries,
)

# A conversation's response: assistant turn (message 1), a tool's answer (2), assistant turn (3)
MASK = [1, 1, 1, 0, 0, 1, 1]
TURNS = [1, 1, 1, 2, 2, 3, 3]


def test_scored_flags_default_to_every_token():
    assert scored_flags(None, 3) == [True] * 3
    assert scored_flags(MASK, 7) == [bool(m) for m in MASK]


def test_continuations_stop_where_the_turn_ends_and_never_start_at_context():
    # the first turn is followed by the tool's answer: at most the tokens left in it; the last
    # turn ends the response: no limit, as a single-turn line
    assert continuation_limits(scored_flags(MASK, 7)) == [3, 2, 1, None, None, None, None]
    assert continuation_limits([True] * 4) == [None] * 4
    assert continuation_limits([True, True, False]) == [2, 1, None]
    assert turn_ends(scored_flags(MASK, 7)) == [3, 3, 3, 5, 5, 7, 7]


def test_turn_keys_by_message_or_by_run_of_student_tokens():
    scored = scored_flags(MASK, 7)
    assert turn_keys(scored, TURNS) == [1, 1, 1, None, None, 3, 3]
    runs = turn_keys(scored, None)  # token-level: each run of student tokens is a turn
    assert runs[:3] == [runs[0]] * 3 and runs[3:5] == [None, None] and runs[5] == runs[6] != runs[0]


def step(t, kl, agree, scored=True, turn=None, segment=None):
    return {
        "position": t, "scored": scored, "turn": turn, "segment": segment, "reverse_kl": kl,
        "forward_kl": kl / 2, "advantage": -kl, "student_logprob": -1.0, "teacher_logprob": -1.0 - kl,
        "agree": agree, "teacher_continuation": None,
    }  # fmt: skip


def conversation_steps():
    kls = [0.5, 0.25, 0.125, 9.0, 9.0, 1.0, 2.0]
    agrees = [True, False, True, False, False, True, False]
    segs = ["thinking", "thinking", "answer", None, None, None, None]
    return [
        step(t, kls[t], agrees[t], bool(MASK[t]), TURNS[t], segs[t]) for t in range(7)
    ]  # fmt: skip


def test_summary_counts_scored_steps_only():
    steps = conversation_steps()
    summary = summarize(steps)
    scored = [s for s in steps if s["scored"]]
    assert summary == summarize(scored)  # the context steps change nothing
    assert summary["tokens"] == 5 and summary["divergences"] == 2
    assert summary["first_divergence"] == 1  # a position in the response
    assert math.isclose(summary["reverse_kl_total"], 0.5 + 0.25 + 0.125 + 1.0 + 2.0)
    assert summary["agreement_rate"] == 3 / 5


def test_summary_turns_per_assistant_turn():
    assert turn_summaries(conversation_steps()) == [
        {"message_index": 1, "tokens": 3, "reverse_kl": 0.875, "divergences": 1, "agreement_rate": 2 / 3},
        {"message_index": 3, "tokens": 2, "reverse_kl": 3.0, "divergences": 1, "agreement_rate": 0.5},
    ]
    assert turn_summaries([step(0, 1.0, True)]) is None  # token-level: no turns


def test_summary_segments_split_the_figures():
    steps = conversation_steps()
    parts = summary_parts(steps, False, False)
    assert parts["segments"]["thinking"] == summarize(steps[:2])
    assert parts["segments"]["answer"] == summarize(steps[2:3])
    assert parts["segments"]["thinking"]["tokens"] == 2
    unmarked = [dict(s, segment=None) for s in steps]
    assert summary_parts(unmarked, False, False)["segments"] is None


def test_turn_continuations_cap_at_the_turn_and_skip_context():
    asked = {}

    def continue_from(context, response, k, progress, *, positions=None, stage="continuations"):
        asked["positions"] = positions
        wanted = range(len(response)) if positions is None else positions
        return [[100 + t] * k for t in wanted]  # a stand-in for the teacher's greedy tokens

    response = list(range(7))
    got = turn_continuations(continue_from, [9], response, 4, scored_flags(MASK, 7))
    assert asked["positions"] == [0, 1, 2, 5, 6]
    assert got == [[100] * 3, [101] * 2, [102], None, None, [105] * 4, [106] * 4]
    # every token the student's: asked as before conversations existed, nothing capped
    whole = turn_continuations(continue_from, [9], response, 4, [True] * 7)
    assert asked["positions"] is None and whole == [[100 + t] * 4 for t in range(7)]
