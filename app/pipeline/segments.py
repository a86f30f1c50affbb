"""Thinking apart from the answer: which response tokens are reasoning and which the answer.

Per turn (the tokens of one assistant message, or of one run of the student's tokens in a
token-level line), from the text its tokens decode to:
- `<think>` ... `</think>` (both markers included) is thinking, the rest of the turn the answer;
- a `</think>` with no `<think>` before it in the turn (the template's generation prompt opened
  it: Qwen3, DeepSeek-R1) makes everything before it, itself included, thinking;
- gpt-oss's harmony format: `<|channel|>analysis<|message|>` ... `<|end|>` is thinking, the rest
  (the `<|channel|>final<|message|>` answer) the answer;
- a turn with none of these markers is neither (null), and so is every token outside a turn.
Markers are found in the turn's text, so a marker split over several tokens counts: each token
whose characters overlap a thinking span is thinking. Pure functions over strings: no
tokenizer, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

THINKING, ANSWER = "thinking", "answer"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HARMONY_ANALYSIS = re.compile(r"<\|channel\|>\s*analysis\s*<\|message\|>")
HARMONY_END = "<|end|>"


def thinking_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the reasoning in one turn's text (empty: none marked)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    first_close = text.find(THINK_CLOSE)
    first_open = text.find(THINK_OPEN)
    if first_close >= 0 and (first_open < 0 or first_close < first_open):
        # opened by the template before the turn: everything up to the close is reasoning
        pos = first_close + len(THINK_CLOSE)
        spans.append((0, pos))
    while (start := text.find(THINK_OPEN, pos)) >= 0:
        close = text.find(THINK_CLOSE, start + len(THINK_OPEN))
        end = len(text) if close < 0 else close + len(THINK_CLOSE)  # unclosed: cut off mid-thought
        spans.append((start, end))
        pos = end
    pos = 0
    while (match := HARMONY_ANALYSIS.search(text, pos)) is not None:
        close = text.find(HARMONY_END, match.end())
        if close < 0:  # unclosed: to the end (an analysis marker after it is inside this span)
            spans.append((match.start(), len(text)))
            break
        spans.append((match.start(), close + len(HARMONY_END)))
        pos = close + len(HARMONY_END)
    return spans


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans sorted and joined where they overlap or touch (the same characters covered)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def turn_segments(tokens: Sequence[str]) -> list[str | None]:
    """Each token of one turn as "thinking" or "answer" (all None when nothing marks reasoning).
    `tokens`: the turn's tokens, each decoded alone, in order."""
    text = "".join(tokens)
    spans = thinking_spans(text)
    if not spans:
        return [None] * len(tokens)
    spans = _merged(spans)
    out: list[str | None] = []
    start, i = 0, 0
    for token in tokens:
        end = start + len(token)
        # the spans are sorted and apart, the tokens in order: only the first span not yet passed
        # can hold this token (one pass over both, however many spans a hostile turn has)
        while i < len(spans) and spans[i][1] <= start:
            i += 1
        # a token overlapping a span is thinking (an empty token takes the side of its position)
        inside = i < len(spans) and spans[i][0] < max(end, start + 1)
        out.append(THINKING if inside else ANSWER)
        start = end
    return out


def segments(tokens: Sequence[str], turns: Sequence[Hashable | None]) -> list[str | None]:
    """Each response token's segment: `turns[i]` names the turn token i belongs to (None: a
    context token, which has no segment); tokens of one turn are taken together wherever they
    are (`turn_segments`)."""
    members: dict[Hashable, list[int]] = {}
    for i, turn in enumerate(turns):
        if turn is not None:
            members.setdefault(turn, []).append(i)
    out: list[str | None] = [None] * len(tokens)
    for positions in members.values():
        for i, segment in zip(positions, turn_segments([tokens[i] for i in positions]), strict=True):
            out[i] = segment
    return out
