"""Prompts already rendered (`rendered: true`): the exact text the model saw, chat template and
generation prompt applied, as training logs store it (docs/formats.md, "Prompts already rendered").

Such a prompt is never templated again. The teacher's privileged info goes where the student's
template ends the last user turn; that place is learned from the template itself, by rendering a
probe conversation whose last user message is a unique marker, so no template's syntax is
hard-coded here. Where the place cannot be found exactly, the line is refused with the reason:
a guess would silently put the privileged info somewhere the normal path never would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrollout.core.errors import BadTrajectory

PROBE = "VROLLOUT-PROBE-5f1c9a"  # a marker no template writes and no tokenizer splits around
AS_MESSAGES = "give the prompt as messages instead (or its token ids as prompt_ids)"


@dataclass(frozen=True)
class TurnEnd:
    """What the template writes after the last user message's content."""

    closing: str  # with the generation prompt, e.g. "<|im_end|>\n<|im_start|>assistant\n"
    user_end: str  # without it (the end of any user turn), e.g. "<|im_end|>\n"


def turn_end(tokenizer: Any) -> TurnEnd:
    """The end of the last user turn as `tokenizer`'s chat template renders it, from a probe."""
    if not getattr(tokenizer, "chat_template", None):
        raise BadTrajectory(
            "rendered: the student's tokenizer has no chat template, so where the last user turn "
            f"ends cannot be found for the privileged info; {AS_MESSAGES}",
            field="rendered",
        )
    after = []
    for generation_prompt in (True, False):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": PROBE}], tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # a template may refuse a lone user message (jinja raise_exception)
            raise BadTrajectory(
                f"rendered: the student's chat template does not render a lone user message ({exc}), "
                f"so where a user turn ends cannot be learned; {AS_MESSAGES}",
                field="rendered",
            ) from None
        if text.count(PROBE) != 1:
            raise BadTrajectory(
                "rendered: the student's chat template changes the user message's text, so where a "
                f"user turn ends cannot be learned; {AS_MESSAGES}",
                field="rendered",
            )
        after.append(text.split(PROBE)[1])
    closing, user_end = after
    if not closing:
        raise BadTrajectory(
            "rendered: the student's chat template writes nothing after the last user message, so "
            f"its end cannot be found in a rendered prompt; {AS_MESSAGES}",
            field="rendered",
        )
    return TurnEnd(closing, user_end)


def _specials(tokenizer: Any) -> set[str]:
    named = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return named | {t.content for t in added.values() if getattr(t, "special", False)}


def _missing_specials(tokenizer: Any, prompt: str, closing: str) -> list[str]:
    """The special tokens of the template's closing sequence, when `prompt` has none of them."""
    specials = sorted(s for s in _specials(tokenizer) if s and s in closing)
    return specials if specials and not any(s in prompt for s in specials) else []


def _stripped_error(specials: list[str]) -> BadTrajectory:
    return BadTrajectory(
        f"rendered: the prompt has none of the chat template's special tokens "
        f"({', '.join(specials)}): it was decoded with skip_special_tokens=True (verl's "
        "rollout dumps are), so it is not the text the model saw, and the end of its last "
        f"user turn cannot be found; {AS_MESSAGES}",
        field="prompt",
    )


def insertion_point(tokenizer: Any, prompt: str) -> tuple[int, list[str]]:
    """Where in `prompt` the last user turn's content ends (the start of the template's closing
    sequence), and notes. Refused when the closing sequence is missing (a prompt decoded without
    its special tokens, or rendered by another template) or when another user turn follows it."""
    end = turn_end(tokenizer)
    at = prompt.rfind(end.closing)
    if at < 0:
        if specials := _missing_specials(tokenizer, prompt, end.closing):
            raise _stripped_error(specials)
        raise BadTrajectory(
            f"rendered: the prompt does not contain the end of a user turn and the generation prompt "
            f"as the student's chat template writes them ({end.closing!r}): it is not this "
            f"template's rendering; {AS_MESSAGES}",
            field="prompt",
        )
    tail = prompt[at + len(end.closing) :]
    if end.user_end and end.user_end in tail:
        raise BadTrajectory(
            "rendered: a user turn ends after the prompt's last generation prompt, so which user "
            f"turn is the last one is ambiguous; {AS_MESSAGES}",
            field="prompt",
        )
    notes = []
    if tail:
        notes.append(
            f"the rendered prompt has {len(tail)} characters after the generation prompt (e.g. a "
            "prefilled start of the answer); they stay in both contexts as given"
        )
    return at, notes


def privileged_parts(template: str, privileged: str) -> tuple[str, str]:
    """The text the teacher template puts before and after the original prompt (`{prompt}`)."""
    full = template.format(prompt=PROBE, privileged=privileged, feedback=privileged)
    if full.count(PROBE) != 1:
        raise BadTrajectory("the privileged info contains the probe marker", field="privileged")
    before, _, after = full.partition(PROBE)
    return before, after


def teacher_text(tokenizer: Any, prompt: str, privileged: str | None, template: str) -> tuple[str, list[str]]:
    """The teacher's context text: the rendered `prompt` with the teacher template's privileged
    part inserted where the last user turn's content ends, exactly as the normal path's
    `teacher_messages` + chat template would place it; and notes. Without privileged info
    nothing is placed: the prompt is returned as it is (`_as_given`)."""
    if not privileged:
        return prompt, _as_given(tokenizer, prompt)
    at, notes = insertion_point(tokenizer, prompt)
    before, after = privileged_parts(template, privileged)
    if before:
        raise BadTrajectory(
            "rendered: the teacher template puts text before {prompt}; in a rendered prompt only "
            "the end of the last user turn can be found, so the template must start with {prompt} "
            f"(VROLLOUT_TEACHER_TEMPLATE); {AS_MESSAGES}",
            field="rendered",
        )
    return prompt[:at] + after + prompt[at:], notes


def _as_given(tokenizer: Any, prompt: str) -> list[str]:
    """Notes on a rendered prompt that takes no privileged info: it is the context as it is, even
    without any chat-template turn (a text prompt the model saw untemplated, as TRL logs one).
    Only a rendering stripped of its special tokens is refused: the model never saw that text."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    try:
        end = turn_end(tokenizer)
    except BadTrajectory:
        return []  # a template that cannot be probed: nothing to check the text against
    if end.closing in prompt:
        return []
    specials = _missing_specials(tokenizer, prompt, end.closing)
    bare = end.closing
    for special in specials:
        bare = bare.replace(special, "")
    if specials and bare.strip() and prompt.endswith(bare):  # the closing, its special tokens gone
        raise _stripped_error(specials)
    return [
        "the rendered prompt has no user turn ended as the student's chat template ends one "
        f"({end.closing!r}): it is used as the exact text given (privileged info could not be "
        "placed in it)"
    ]
