"""Thinking apart from the answer (pipeline/segments.py): markers whole or split over tokens, a
closing marker opened by the template, gpt-oss's channels, nothing marked."""

from __future__ import annotations

import pytest
from vrollout.pipeline.segments import segments, thinking_spans, turn_segments

T, A = "thinking", "answer"


def test_think_tags_mark_the_reasoning_markers_included():
    tokens = ["<think>", "Let", " me", " see", "</think>", "\n\n", "391"]
    assert turn_segments(tokens) == [T, T, T, T, T, A, A]


def test_markers_split_over_tokens_are_found_by_character_offsets():
    tokens = ["<", "th", "ink", ">", "hm", "</", "think", ">", "The", " answer"]
    assert turn_segments(tokens) == [T] * 8 + [A, A]


def test_a_token_that_straddles_the_closing_marker_is_thinking():
    tokens = ["<think>", "ok", "k>", "</think>\n\n4", "2"]  # the closing marker shares its token
    assert turn_segments(tokens) == [T, T, T, T, A]


def test_a_closing_marker_with_no_opening_makes_everything_before_it_thinking():
    # Qwen3 / DeepSeek-R1: the template's generation prompt opened <think>, outside the response
    tokens = ["so", " 17*23", "=391", "</th", "ink>", "\n\n", "391"]
    assert turn_segments(tokens) == [T, T, T, T, T, A, A]


def test_an_unclosed_think_runs_to_the_end_of_the_turn():
    assert turn_segments(["Sure.", "<think>", "still", " going"]) == [A, T, T, T]


def test_gpt_oss_channels():
    tokens = [
        "<|channel|>", "analysis", "<|message|>", "We", " need", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "391", "<|return|>",
    ]  # fmt: skip
    assert turn_segments(tokens) == [T] * 6 + [A] * 7


def test_nothing_marked_is_null():
    assert turn_segments(["The", " answer", " is", " 391"]) == [None] * 4
    assert thinking_spans("no markers") == []


def test_each_turn_is_segmented_on_its_own_and_context_tokens_have_none():
    # turn 1 closes a think the template opened; the tool's text (context, key None) mentions
    # </think> but is not the student's; turn 3 has no reasoning at all
    tokens = ["a", "</think>", "call", "tool says </think>", "<think>", "b", "</think>", "done"]
    turns = [1, 1, 1, None, 3, 3, 3, 3]
    assert segments(tokens, turns) == [T, T, A, None, T, T, T, A]
    assert segments(["x", "y"], [2, 2]) == [None, None]


def _line_events(run, path: str) -> int:
    """Lines executed in the file at `path` while `run()` runs: the work, counted without a clock."""
    import sys

    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename == path:
            count += event == "line"
            return trace
        return None

    sys.settrace(trace)
    try:
        run()
    finally:
        sys.settrace(None)
    return count


def test_many_thinking_spans_are_segmented_in_linear_work():
    # A hostile turn of one short span after another: each token is checked against the spans
    # near it, not against every span of the turn (32,000 such tokens took minutes).
    import vrollout.pipeline.segments as module

    def work(pairs: int) -> int:
        tokens = ["<think>", "x", "</think>", "y"] * pairs
        expected = [T, T, T, A] * pairs
        return _line_events(
            lambda: turn_segments(tokens) == expected or pytest.fail("wrong"), module.__file__
        )

    small, large = work(250), work(1000)
    assert large < 6 * small  # four times the tokens: linear is about 4x, quadratic 16x


def test_harmony_analysis_markers_with_no_end_are_found_once():
    # Every unclosed analysis channel runs to the end: the spans are the same however many there are
    text = "<|channel|>analysis<|message|>a" * 3
    assert thinking_spans(text) == [(0, len(text))]
    tokens = ["<|channel|>analysis<|message|>", "a"] * 3
    assert turn_segments(tokens) == [T] * 6


def test_segments_equal_a_naive_reference_on_mixed_markers():
    import random

    rng = random.Random(7)
    pieces = [
        "<think>",
        "</think>",
        "<",
        "think>",
        "</",
        "a",
        " b",
        "<|channel|>analysis<|message|>",
        "<|end|>",
        "",
    ]
    for _ in range(300):
        tokens = [rng.choice(pieces) for _ in range(rng.randint(1, 12))]
        spans = thinking_spans("".join(tokens))
        start, naive = 0, []
        for token in tokens:
            end = start + len(token)
            naive.append(T if any(lo < max(end, start + 1) and start < hi for lo, hi in spans) else A)
            start = end
        assert turn_segments(tokens) == (naive if spans else [None] * len(tokens)), tokens
