"""Error localization, part one: ProcessBench-shaped lines in, a score per step out.

A localization line is a trajectory whose response comes as `"steps": [str]` (joined with
`STEP_SEPARATOR`) with `"label"`: the index of the earliest wrong step, or -1 when every step is
right (docs/formats.md, "Localization lines"). `localization_line` turns one into an ordinary
analysis request (the one validation path does the rest) and keeps the steps and the label in
its `meta`, so that an analysis alone is enough to score it again. The scorers read an
analysis's per-token signals and give each step one number, higher = more suspect. The metrics
live in `metrics.localization_eval`. No torch, no HTTP.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from vrollout.errors import BadTrajectory
from vrollout.inputs.validation import validate

STEP_SEPARATOR = "\n\n"
# Fields that would give a response of their own: the steps are the response.
RESPONSE_FIELDS = ("response", "response_ids", "completion", "prompt_ids", "teacher_prompt_ids")


class LocalizationFields(BaseModel):
    """The two fields a localization line adds to a trajectory (strict, like every request)."""

    model_config = ConfigDict(strict=True)
    steps: list[str] = Field(min_length=1, description="the response, step by step")
    label: int = Field(ge=-1, description="index of the earliest wrong step; -1: all steps are right")


def is_localization_line(obj: Any) -> bool:
    """A file line that asks to be scored step by step (it carries `steps`)."""
    return isinstance(obj, dict) and "steps" in obj


def localization_line(obj: Any) -> dict[str, Any]:
    """A ProcessBench-shaped line as an analysis request: the response is the steps joined by a
    blank line, and `meta` keeps `steps` and `label`. Raises `BadTrajectory` naming the field."""
    if not isinstance(obj, dict):
        raise BadTrajectory(f"a localization line must be a JSON object, got {type(obj).__name__}")
    if "label" not in obj:
        raise BadTrajectory("label is required (the earliest wrong step, or -1)", field="label")
    fields = validate(LocalizationFields, {"steps": obj["steps"], "label": obj["label"]})
    steps, label = fields.steps, fields.label
    for i, step in enumerate(steps):
        if not step.strip():
            raise BadTrajectory(f"steps[{i}] is empty", field="steps", index=i)
    if label >= len(steps):
        raise BadTrajectory(
            f"label must be -1 or a step index (0..{len(steps) - 1}), got {label}", field="label"
        )
    given = [name for name in RESPONSE_FIELDS if name in obj]
    if given:
        raise BadTrajectory(
            f"{given[0]}: a localization line's response is its steps (give a text prompt: "
            "`prompt` or `messages`)",
            field=given[0],
        )
    line = {key: value for key, value in obj.items() if key not in ("steps", "label")}
    response = STEP_SEPARATOR.join(steps)
    messages = line.get("messages")
    if isinstance(messages, list):
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            raise BadTrajectory(
                "messages: a localization line's response is its steps (no assistant message at the end)",
                field="messages",
            )
        line["messages"] = [*messages, {"role": "assistant", "content": response}]
    elif isinstance(line.get("prompt"), list):  # TRL's prompt-completion
        line["completion"] = [{"role": "assistant", "content": response}]
    else:
        line["response"] = response
    meta = line.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise BadTrajectory("meta must be an object", field="meta")
    line["meta"] = {**(meta or {}), "steps": steps, "label": label}
    return line


def step_spans(steps: Sequence[str]) -> list[tuple[int, int]]:
    """Each step's characters in the joined response: [start, end)."""
    spans, start = [], 0
    for step in steps:
        spans.append((start, start + len(step)))
        start += len(step) + len(STEP_SEPARATOR)
    return spans


def token_offsets(tokenizer: Any, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Each token's characters in `text` ([start, end)). The tokenizer's own offsets when it
    gives them for exactly these ids; otherwise from the lengths of decoded prefixes (a token
    inside a multi-byte character then gets an empty span where its character begins)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError, ValueError):
        pass  # a slow tokenizer: no offsets
    offsets, before = [], 0
    for i in range(len(ids)):
        decoded = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False)
        end = len(decoded.rstrip("\ufffd"))  # an unfinished character has not arrived yet
        offsets.append((before, max(end, before)))
        before = max(end, before)
    return offsets


def token_steps(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The step of each token. A token belongs to the step holding its first character that is
    not a separator: a token that straddles a boundary (".\\n\\n" or "\\n\\nStep") goes to the
    step whose text it starts with. A token of separator characters only (or an empty span)
    belongs to the step before it (it ends that step; the first step if none is before it)."""
    starts = [s for s, _ in spans]
    out = []
    for start, end in offsets:
        i = max(bisect.bisect_right(starts, start) - 1, 0)  # the last step starting at or before it
        if spans[i][1] <= start and i + 1 < len(spans) and spans[i + 1][0] < end:
            i += 1  # it starts in the separator after step i and runs into the next step's text
        out.append(i)
    return out


def _per_step(
    values: Sequence[float], owner: Sequence[int], n_steps: int, pick: Callable[[list[float]], float]
) -> list[float | None]:
    groups: list[list[float]] = [[] for _ in range(n_steps)]
    for value, step in zip(values, owner, strict=True):
        groups[step].append(value)
    return [pick(g) if g else None for g in groups]


def recovery_drop(
    recovery: dict[str, Any], owner: Sequence[int], n_steps: int, tokens: int
) -> list[float | None]:
    """Per step: r(before) − r(after), where r(p) says whether the teacher reached the answer
    from the prefix of p tokens (the latest recovery point at or before p; the whole response
    counts as the student's own success). 1: the step lost a reachable answer."""
    points = sorted((p["position"], bool(p["success"])) for p in recovery["points"])
    positions = [p for p, _ in points]

    def reachable(prefix: int) -> float:
        if prefix >= tokens:
            return float(bool(recovery["student_success"]))
        i = bisect.bisect_right(positions, prefix) - 1
        return float(points[i][1]) if i >= 0 else 0.0

    first: list[int | None] = [None] * n_steps
    last: list[int | None] = [None] * n_steps
    for t, step in enumerate(owner):
        first[step] = t if first[step] is None else first[step]
        last[step] = t
    return [
        None if a is None or b is None else reachable(a) - reachable(b + 1)
        for a, b in zip(first, last, strict=True)
    ]


# Each scorer: a step's score from its tokens' signals; higher = more suspect.
SCORERS: dict[str, str] = {
    "max_reverse_kl": "the step's largest reverse KL",
    "min_advantage": "minus the step's most negative advantage",
    "min_teacher_logprob": "minus the step's lowest teacher log-prob",
    "max_teacher_rank": "the largest teacher rank among the step's divergences (1 without one)",
    "recovery_drop": "the teacher could reach the answer before the step and not after it (recovery)",
}
TOKEN_SCORERS = ("max_reverse_kl", "min_advantage", "min_teacher_logprob", "max_teacher_rank")


def step_scores(
    analysis: dict[str, Any], owner: Sequence[int], n_steps: int, scorers: Sequence[str]
) -> dict[str, list[float | None]]:
    """Each scorer's score per step (None for a step that got no token, or no recovery)."""
    steps = analysis["steps"]
    out: dict[str, list[float | None]] = {}
    for name in scorers:
        if name == "max_reverse_kl":
            out[name] = _per_step([s["reverse_kl"] for s in steps], owner, n_steps, max)
        elif name == "min_advantage":
            out[name] = _per_step([s["advantage"] for s in steps], owner, n_steps, lambda g: -min(g))
        elif name == "min_teacher_logprob":
            out[name] = _per_step([s["teacher_logprob"] for s in steps], owner, n_steps, lambda g: -min(g))
        elif name == "max_teacher_rank":
            # No rank inside a span of a teacher with another tokenizer: no prediction, as rank 1
            ranks = [float(s["teacher_rank"] or 1) for s in steps]
            out[name] = _per_step(ranks, owner, n_steps, max)
        elif name == "recovery_drop":
            rec = analysis.get("recovery")
            out[name] = recovery_drop(rec, owner, n_steps, len(steps)) if rec else [None] * n_steps
        else:
            raise BadTrajectory(f"unknown scorer {name!r} (one of {', '.join(SCORERS)})")
    return out


def localization_of(analysis: dict[str, Any]) -> tuple[list[str], int] | None:
    """The steps and label an analysis of a localization line keeps in its meta (else None).
    `meta` is any caller's JSON: only non-empty texts and a label in [-1, len(steps)), as
    `localization_line` checks them, are a localization line's (anything else is no steps to
    score or draw, never a 500)."""
    meta = (analysis.get("trajectory") or {}).get("meta") or {}
    steps, label = meta.get("steps"), meta.get("label")
    if not isinstance(steps, list) or not isinstance(label, int) or isinstance(label, bool):
        return None
    if not steps or not all(isinstance(step, str) for step in steps) or not -1 <= label < len(steps):
        return None
    return steps, label


def score_analysis(
    analysis: dict[str, Any], tokenizer: Any, scorers: Sequence[str]
) -> dict[str, list[float | None]]:
    """The scores per step of one analysis of a localization line."""
    found = localization_of(analysis)
    if found is None:
        raise BadTrajectory("this analysis is not of a localization line (no steps and label in its meta)")
    steps, _ = found
    text = STEP_SEPARATOR.join(steps)
    offsets = token_offsets(tokenizer, text, analysis["response_ids"])
    owner = token_steps(offsets, step_spans(steps))
    return step_scores(analysis, owner, len(steps), scorers)


def problem_key(analysis: dict[str, Any]) -> str:
    """What groups lines into problems for the folds: the prompt the student saw."""
    return analysis["student"]["context_text"]
