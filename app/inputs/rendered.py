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

from vrollout.errors import BadTrajectory
from vrollout.rules import fill_teacher_template

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
    full = fill_teacher_template(template, PROBE, privileged)
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


# --- A rendered prompt back as messages --------------------------------------------------------
# The export gives the prompt as chat messages (TRL applies the chat template to them): a rendered
# prompt given as one user message would be templated twice. Its messages are recovered from the
# student's own template, learned from probe conversations, and accepted only when rendering them
# gives back exactly the text.

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class _Grammar:
    """How the template writes a conversation that starts with `first`: the text before the first
    message's content, the text between two messages' contents by their roles, and the text after
    the last user message's content with the generation prompt."""

    first: str
    head: str
    between: dict[tuple[str, str], str]
    tail: str


def _probe(tokenizer: Any, roles: tuple[str, ...]) -> list[str] | None:
    """The rendered probe conversation (one marker per message, generation prompt added) split at
    its markers; None where the template refuses it or changes a marker."""
    markers = [f"{PROBE}-{i}" for i in range(len(roles))]
    messages = [{"role": r, "content": m} for r, m in zip(roles, markers, strict=True)]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template may refuse a role or an order (jinja raise_exception)
        return None
    parts = []
    for marker in markers:
        if not isinstance(text, str) or text.count(marker) != 1:
            return None
        before, _, text = text.partition(marker)
        parts.append(before)
    return [*parts, text]


def _grammars(tokenizer: Any) -> list[_Grammar]:
    """The template's ways to start a conversation, fewest messages first (without a system
    message before with one: a template's default system prompt is then recovered as the default,
    not as a message the line never gave)."""
    grammars = []
    for first in (("user",), ("system", "user")):
        short = _probe(tokenizer, first)
        if short is None:
            continue
        between = {}
        if len(first) == 2:
            between[("system", "user")] = short[1]
        turns = _probe(tokenizer, (*first, "assistant", "user"))
        if turns is not None and turns[0] == short[0] and turns[-1] == short[-1]:
            between[("user", "assistant")], between[("assistant", "user")] = turns[-3], turns[-2]
        grammars.append(_Grammar(first[0], short[0], between, short[-1]))
    return grammars


def _parse(grammar: _Grammar, text: str) -> list[dict[str, str]] | None:
    """The messages `text` holds as `grammar` writes them: each content runs to the first
    separator its role may be followed by (the round trip judges a content that held one)."""
    if not text.startswith(grammar.head) or not text.endswith(grammar.tail):
        return None
    end = len(text) - len(grammar.tail)
    at, role, messages = len(grammar.head), grammar.first, []
    while at <= end:
        nexts = [
            (found, after, sep)
            for (before, after), sep in grammar.between.items()
            if before == role and sep and 0 <= (found := text.find(sep, at, end)) < end
        ]
        if not nexts:
            if role != "user":
                return None
            messages.append({"role": role, "content": text[at:end]})
            return messages
        found, after, sep = min(nexts)
        messages.append({"role": role, "content": text[at:found]})
        at, role = found + len(sep), after
    return None


def as_messages(tokenizer: Any, text: str) -> list[dict[str, str]] | None:
    """The chat messages whose rendering by `tokenizer`'s chat template (generation prompt added)
    is exactly `text`, or None. Learned from the template by probes (no template syntax is
    hard-coded); system, user and assistant turns. None where the template cannot be probed or
    inverted, or `text` is not its rendering of any conversation ending on a user turn (a
    prefilled answer after the generation prompt, another template, stripped special tokens):
    then TRL, applying the template to the messages, would not see the text the student saw."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    found = []
    for grammar in _grammars(tokenizer):
        messages = _parse(grammar, text)
        if messages is None:
            continue
        try:
            again = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:
            continue
        if again == text:
            found.append((grammar, messages))
    if len(found) < 2:
        return found[0][1] if found else None
    return _likelier(*found)


def _likelier(
    plain: tuple[_Grammar, list[dict[str, str]]], with_system: tuple[_Grammar, list[dict[str, str]]]
) -> list[dict[str, str]]:
    """Of two conversations that both render to the text, one starting with a system message: it,
    where the template marks a system message (writes more than whitespace for it that it does not
    write for a user turn: Llama 2's <<SYS>>), unless it is the template's default system prompt
    (the other one is then the same conversation without it: SmolLM2's, Qwen's). A system message
    written into the user turn as bare text (Gemma's) cannot be told from the user's own text: the
    user message keeps it."""
    (user_grammar, user_messages), (system_grammar, system_messages) = plain, with_system
    marked = system_grammar.head != user_grammar.head or system_grammar.between[("system", "user")].strip()
    default = system_messages[1:] == user_messages
    return system_messages if marked and not default else user_messages


def ids_as_messages(tokenizer: Any, ids: list[int]) -> list[dict[str, str]] | None:
    """`as_messages` of a prompt given as token ids (decoded with its special tokens), accepted only
    when the rendering of the messages also tokenizes back to exactly `ids` (as TRL tokenizes it:
    no special tokens added), else None."""
    messages = as_messages(tokenizer, tokenizer.decode(ids, skip_special_tokens=False))
    if messages is None:
        return None
    again = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return messages if tokenizer(again, add_special_tokens=False)["input_ids"] == list(ids) else None


# --- A rendered prompt decoded without its special tokens ---------------------------------------
# verl dumps `tokenizer.decode(prompt_ids, skip_special_tokens=True)`: the chat template's special
# tokens are gone. The messages are recovered with the template's own framing (the probes above)
# with those tokens taken out, rendered again, and accepted only when tokenizing that rendering and
# decoding it as verl does gives back exactly the dumped text: then it is the text the model saw.

RECONSTRUCTED = (
    "the prompt was reconstructed: it was decoded without the chat template's special tokens "
    "(skip_special_tokens=True, as verl dumps prompts); its messages were recovered from the "
    "student's chat template and rendered again, which decodes back to exactly the text given"
)


def _without(text: str, specials: list[str]) -> str:
    for special in specials:
        text = text.replace(special, "")
    return text


def restore_specials(tokenizer: Any, prompt: str) -> tuple[str, list[str]]:
    """The rendered prompt that `prompt` is the special-token-free decoding of, and a note saying
    so; `prompt` itself, and no note, where it holds the template's closing sequence already,
    the template has no special tokens to lose, or no conversation renders back to it exactly
    (then the rendered checks refuse it with the reason, as before)."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt, []
    try:
        end = turn_end(tokenizer)
    except BadTrajectory:
        return prompt, []
    specials = sorted((s for s in _specials(tokenizer) if s), key=len, reverse=True)
    if end.closing in prompt or not any(s in end.closing for s in specials):
        return prompt, []
    found = []
    for grammar in _grammars(tokenizer):
        bare = _Grammar(
            grammar.first,
            _without(grammar.head, specials),
            {roles: _without(sep, specials) for roles, sep in grammar.between.items()},
            _without(grammar.tail, specials),
        )
        messages = _parse(bare, prompt) if bare.tail else None
        if messages is None:
            continue
        try:
            again = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(again, add_special_tokens=False)["input_ids"]
        except Exception:  # a template that refuses the recovered conversation
            continue
        if tokenizer.decode(ids, skip_special_tokens=True) == prompt:
            found.append((grammar, messages, again))
    if not found:
        return prompt, []
    if len(found) == 2 and found[0][2] != found[1][2]:
        chosen = _likelier(found[0][:2], found[1][:2])
        text = next(again for _, messages, again in found if messages is chosen)
    else:
        text = found[0][2]
    return text, [RECONSTRUCTED]
