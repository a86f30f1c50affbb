"""Rules that every backend follows, stated once: where a sequence ends, when the teacher steps
in during a pedagogical rollout, and what a teacher template must hold.

The local engine and the vLLM backend both call these; neither restates them. No torch, no
HTTP: the backends hand over plain numbers.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def eos_set(generation_eos: int | list[int] | None, tokenizer_eos: int | None) -> set[int]:
    """The end-of-sequence ids of a model: its generation config's (one id or a list), else its
    tokenizer's, else none."""
    eos = generation_eos if generation_eos is not None else tokenizer_eos
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """A continuation ends with the first end-of-sequence token (kept)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


TEMPLATE_FIELDS = ("prompt", "privileged", "feedback")  # {feedback}: another name for {privileged}


def _pieces(template: str, what: str, allowed: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """A template as (literal text, placeholder name or None) pieces, refused unless every field is
    exactly one of `allowed`: no conversion (`!r`), no format spec (`:>400000000`), no attribute or
    index (`.x`, `[0]`). The one parser behind both the check and the fill, so what is checked is
    what is filled, and filling never runs str.format's formatting machinery on a user's template
    (a spec can ask for gigabytes of padding, or raise on a string)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # e.g. a lone "{": literal braces are written {{ and }}
        raise ValueError(
            f"the {what} is not a valid format string ({exc}; write a literal brace twice)"
        ) from None
    only = " ".join("{" + n + "}" for n in allowed)
    pieces: list[tuple[str, str | None]] = []
    other: list[str] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
            continue
        if conversion is not None or spec:
            written = (
                "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            )
            raise ValueError(
                f"the {what} has {written}: a placeholder is written plainly, with no conversion "
                f"or format spec ({only})"
            )
        if name not in allowed:
            other.append(name)
        pieces.append((literal, name))
    if other:
        shown = ", ".join("{" + n + "}" for n in sorted(set(other)))
        raise ValueError(f"the {what} has {shown}: only {only} may be used")
    return pieces


def _fill(pieces: list[tuple[str, str | None]], values: dict[str, str]) -> str:
    """The pieces joined, each placeholder replaced by its value as it is."""
    return "".join(literal + (values[name] if name is not None else "") for literal, name in pieces)


def _fields(template: str, what: str, allowed: tuple[str, ...]) -> set[str]:
    """The placeholders of a template, refused when it is not exactly `allowed` fields."""
    return {name for _, name in _pieces(template, what, allowed) if name is not None}


def check_teacher_template(template: str) -> None:
    """The teacher template must place both the prompt and the privileged info ({privileged}, or
    {feedback}, its other name), and name nothing else."""
    names = _fields(template, "teacher template", TEMPLATE_FIELDS)
    if "prompt" not in names or not names & {"privileged", "feedback"}:
        raise ValueError("the teacher template must contain {prompt} and {privileged} (or {feedback})")


def fill_teacher_template(template: str, prompt: str, privileged: str) -> str:
    """A teacher template filled in (refused, as by the check, unless its fields are plain)."""
    pieces = _pieces(template, "teacher template", TEMPLATE_FIELDS)
    return _fill(pieces, {"prompt": prompt, "privileged": privileged, "feedback": privileged})


def check_prompt_format(fmt: str) -> None:
    """A prompt format (for a model without a chat template) must place the prompt, and only it."""
    if "prompt" not in _fields(fmt, "prompt format", ("prompt",)):
        raise ValueError("the prompt format must contain {prompt}")


def fill_prompt_format(fmt: str, prompt: str) -> str:
    """A prompt format filled in (refused, as by the check, unless its one field is plain)."""
    return _fill(_pieces(fmt, "prompt format", ("prompt",)), {"prompt": prompt})


@dataclass
class Policy:
    """When the teacher steps in during a pedagogical rollout, and how the student samples."""

    threshold: float = 0.05  # teacher probability below which a proposal is unacceptable
    max_rank: int | None = None  # teacher rank above which a proposal is unacceptable
    temperature: float = 0.0  # the student's sampling temperature (0 = greedy)
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0


def unacceptable(policy: Policy, teacher_prob: float, rank: int) -> bool:
    """The intervention rule: the teacher rejects a proposal it finds too unlikely, or ranks
    below `max_rank` (rank 1 = the teacher's top-1)."""
    return teacher_prob < policy.threshold or (policy.max_rank is not None and rank > policy.max_rank)


def pedagogical_step(
    policy: Policy,
    proposal: int,
    teacher_prob: float,
    rank: int,
    teacher_top1: int,
    logprobs: Callable[[int], tuple[float, float]],
) -> dict[str, Any]:
    """One step of a pedagogical rollout: the student's `proposal`, the teacher's verdict on it
    (its probability and rank there, and its own top-1), and the token taken. `logprobs(token)`:
    the (student, teacher) log-probs of the token taken, asked only once it is known."""
    intervened = unacceptable(policy, teacher_prob, rank)
    token = teacher_top1 if intervened else proposal
    student_logprob, teacher_logprob = logprobs(token)
    return {
        "proposal": proposal,
        "token": token,
        "intervened": intervened,
        "proposal_teacher_prob": teacher_prob,
        "proposal_teacher_rank": rank,
        "student_logprob": student_logprob,
        "teacher_logprob": teacher_logprob,
    }
