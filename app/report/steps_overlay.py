"""The steps of a step-labelled line (ProcessBench's shape, docs/formats.md "Localization lines")
drawn on its analysis page: each step's tokens and the labelled first wrong step
(templates/_steps_overlay.html renders it from the page's context, `overlay`). No tokenizer:
tokens are placed by the text each step shows."""

from __future__ import annotations

from typing import Any

from vrollout.metrics.localization import localization_of, step_spans, token_steps

STEP_CHARS = 240  # characters of a step's text shown


def cut_text(text: str) -> str:
    """A step's text as the pages show it: at most STEP_CHARS characters."""
    return text if len(text) <= STEP_CHARS else text[: STEP_CHARS - 1] + "…"


def steps_overlay(analysis: dict[str, Any]) -> dict[str, Any] | None:
    """The steps of a step-labelled line on its analysis (None for any other analysis): each
    step's first and last token position ([start, stop)), its text (cut to STEP_CHARS) and
    whether it is the labelled first wrong step. Tokens are placed by their decoded text (each
    step's token as the analysis shows it), as the scorers place them (`token_steps`)."""
    found = localization_of(analysis)
    if found is None:
        return None
    steps, label = found
    offsets, at = [], 0
    for step in analysis["steps"]:
        offsets.append((at, at + len(step["token"])))
        at += len(step["token"])
    owner = token_steps(offsets, step_spans(steps))
    bounds: list[list[int]] = [[] for _ in steps]
    for position, i in enumerate(owner):
        bounds[i].append(position)
    out = [
        {"index": i, "start": b[0] if b else None, "stop": b[-1] + 1 if b else None,
         "text": cut_text(text), "wrong": i == label}
        for i, (text, b) in enumerate(zip(steps, bounds, strict=True))
    ]  # fmt: skip
    wrong = out[label] if label >= 0 else None
    return {
        "label": label,
        "steps": out,
        "boundaries": [s["start"] for s in out[1:] if s["start"] is not None],
        "wrong_start": None if wrong is None else wrong["start"],
        "wrong_stop": None if wrong is None else wrong["stop"],
    }
