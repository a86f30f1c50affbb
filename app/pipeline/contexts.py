"""Contexts: the student's and the teacher's rendered prompts, as exact token ids and text.

Applies each model's chat template and the teacher template (privileged info). Both models
later see the *same* response ids after their context: nothing is re-tokenized across the
boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from vrollout.errors import BadTrajectory, TooLong
from vrollout.inputs.conversations import (
    Placement,
    Renderer,
    check_prompt_rendered,
    check_tools_rendered,
    place,
)
from vrollout.inputs.rendered import restore_specials, teacher_text
from vrollout.inputs.trajectories import Trajectory
from vrollout.pipeline.backend import Model, Models
from vrollout.rules import fill_prompt_format, fill_teacher_template


@dataclass
class Contexts:
    student_ids: list[int]
    student_text: str
    teacher_ids: list[int]
    teacher_text: str
    privileged: str | None
    response_ids: list[int] | None  # None: the student must generate
    retokenized: bool  # the response came as text and was tokenized with the student's tokenizer
    notes: list[str]
    context_kind: str = "privileged"  # which text the teacher was given (inputs.teacher_context)
    sibling: dict[str, Any] | None = None  # the sibling's {"line", "id"} (kind sibling)
    # Per response token: 1 where the student wrote it, 0 for context (tool, user turns, headers).
    # None: all ones (a single response).
    response_mask: list[int] | None = None
    # Per response token: the index in the conversation's messages of its message (None: a
    # token-level line, whose turns are unknown).
    turns: list[int | None] | None = None
    # The message index a response the student generates will have (None: a token-level line).
    response_turn: int | None = None

    def generated(self, response_ids: list[int]) -> Contexts:
        """These contexts with the response the student generated: all its tokens the student's,
        of the message after the prompt."""
        turns = None if self.response_turn is None else [self.response_turn] * len(response_ids)
        return replace(self, response_ids=response_ids, response_mask=[1] * len(response_ids), turns=turns)


def teacher_messages(messages: list[dict[str, Any]], privileged: str, template: str) -> list[dict[str, Any]]:
    """The prompt with the privileged info inserted into the last user message."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise BadTrajectory("privileged info needs a user message in the prompt to attach to")
    out = [dict(m) for m in messages]
    out[last_user]["content"] = fill_teacher_template(template, messages[last_user]["content"], privileged)
    return out


@dataclass(frozen=True)
class TokenLimit:
    """At most `tokens` for what `name` says (e.g. "student context"), set by `setting`."""

    name: str
    tokens: int
    setting: str

    def check(self, count: int) -> None:
        if count > self.tokens:
            raise TooLong(
                f"the {self.name} has {count} tokens, over the limit of {self.tokens} ({self.setting})"
            )


def _pieces(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of about `size` characters, cut at a space or a newline where one is near
    (a cut there changes how the pieces tokenize little or not at all)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
            end = cut if cut > start else end
        yield text[start:end]
        start = end


def tokenize_within(tokenizer: Any, text: str, limit: TokenLimit) -> list[int]:
    """The ids of `text`, or `TooLong` as soon as it is clearly over the limit. A text longer
    than a piece is counted piece by piece first (each piece about `limit.tokens` characters),
    so a text far over the limit costs a few pieces, not the whole text; one that passes is
    then tokenized whole (its exact ids), at most about the limit's worth of tokens."""

    def encode(piece: str) -> list[int]:
        return list(tokenizer(piece, add_special_tokens=False)["input_ids"])

    size = max(limit.tokens, 1024)
    if len(text) > size:
        counted = 0
        for cuts, piece in enumerate(_pieces(text, size)):
            counted += len(encode(piece))
            if counted > limit.tokens + 2 * cuts:  # a cut may add a token or two
                raise TooLong(
                    f"the {limit.name} is over the limit of {limit.tokens} tokens ({limit.setting})"
                )
    ids = encode(text)
    limit.check(len(ids))
    return ids


def render(
    model: Model,
    messages: list[dict[str, Any]],
    limit: TokenLimit,
    template_kwargs: dict[str, Any] | None = None,
    prompt_format: str | None = None,
    field: str = "messages",
) -> tuple[list[int], str, bool]:
    """(ids, text, templated): the messages through the model's chat template, generation prompt
    added and `template_kwargs` passed on (e.g. enable_thinking), refused once over `limit`. A
    tokenizer without a chat template gets the contents joined by blank lines, placed by
    `prompt_format` ({prompt}) where one is given, else followed by a blank line. A template that
    raises (Gemma's on a system message, ...) refuses the line, naming `field`."""
    tok = model.tokenizer
    if getattr(tok, "chat_template", None):
        try:
            text = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
            )
        except Exception as exc:  # the template's raise_exception, or one that takes no tools
            raise BadTrajectory(
                f"{field}: the chat template of {model.name} does not render these messages "
                f"({type(exc).__name__}: {exc})",
                field=field,
            ) from None
        templated = True
    else:
        joined = "\n\n".join(m["content"] for m in messages)
        text = fill_prompt_format(prompt_format, joined) if prompt_format else joined + "\n\n"
        templated = False
    return tokenize_within(tok, text, limit), text, templated


@lru_cache(maxsize=16)
def _template_variables(template: str) -> frozenset[str] | None:
    """The variables a chat template reads (None: it does not parse as Jinja here)."""
    import jinja2
    from jinja2 import meta

    try:
        return frozenset(meta.find_undeclared_variables(jinja2.Environment().parse(template)))
    except jinja2.TemplateError:
        return None


def unread_arguments(model: Model, template_kwargs: dict[str, Any]) -> list[str]:
    """The chat template arguments `model`'s template never reads (they change nothing: a user
    who sets enable_thinking for a model without that switch should hear of it)."""
    template = getattr(model.tokenizer, "chat_template", None)
    if not template_kwargs or not isinstance(template, str):
        return []
    names = _template_variables(template)
    return [] if names is None else sorted(set(template_kwargs) - names)


def render_role(
    pair: Models,
    role: str,
    messages: list[dict[str, Any]],
    limit: TokenLimit,
    tools: list[dict[str, Any]] | None = None,
    field: str = "messages",
) -> tuple[list[int], str, bool]:
    """`render` for the pair's student or teacher, with that role's chat template arguments (and,
    for the teacher, its prompt format): the settings `{role}_chat_template_kwargs` and
    `teacher_prompt_format`; `tools`, the line's, go to the template as its `tools`. `field`: what
    an error names (the line's messages, or its prompt)."""
    given = {} if tools is None else {"tools": tools}
    if role == "student":
        kwargs = {**pair.student_chat_template_kwargs, **given}
        return render(pair.student, messages, limit, kwargs, field=field)
    return render(
        pair.teacher,
        messages,
        limit,
        {**pair.teacher_chat_template_kwargs, **given},
        pair.teacher_prompt_format,
        field,
    )


def _decode(model: Model, ids: list[int]) -> str:
    return model.tokenizer.decode(ids, skip_special_tokens=False)


def _rendered(
    prompt: str,
    privileged: str | None,
    pair: Models,
    notes: list[str],
    limits: tuple[TokenLimit, TokenLimit],
    template: str,
) -> tuple[list[int], str, list[int], str]:
    """Both contexts of a prompt given rendered: its text as it is for the student, the same with
    the privileged info placed by the student's template for the teacher (`inputs.rendered`), each
    tokenized as-is (no special tokens added: the text holds those the template wrote). A prompt
    decoded without its special tokens (verl's dumps) is first rendered back (`restore_specials`)."""
    prompt, restored = restore_specials(pair.student.tokenizer, prompt)
    notes.extend(restored)
    t_text, found = teacher_text(pair.student.tokenizer, prompt, privileged, template)
    notes.append(
        "the prompt was given rendered (rendered: true): tokenized as it is, no chat template "
        "applied and no special tokens added"
    )
    notes.extend(found)
    if pair.teacher.tokenizer is not pair.student.tokenizer and getattr(
        pair.teacher.tokenizer, "chat_template", None
    ) != getattr(pair.student.tokenizer, "chat_template", None):
        notes.append(
            "the teacher's chat template differs from the student's: its context is the student's "
            "rendering (with the privileged info), not rendered again with its own template"
        )
    s_ids = tokenize_within(pair.student.tokenizer, prompt, limits[0])
    t_ids = tokenize_within(pair.teacher.tokenizer, t_text, limits[1])
    return s_ids, prompt, t_ids, t_text


def _differs(pair: Models) -> bool:
    """The teacher renders with another chat template than the student's."""
    return pair.teacher.tokenizer is not pair.student.tokenizer and getattr(
        pair.teacher.tokenizer, "chat_template", None
    ) != getattr(pair.student.tokenizer, "chat_template", None)


def _templated_notes(pair: Models, templated: bool, t_templated: bool, notes: list[str]) -> None:
    if not templated:
        notes.append("the student's tokenizer has no chat template: contents joined as text")
    for role, model, kwargs in (
        ("student", pair.student, pair.student_chat_template_kwargs),
        ("teacher", pair.teacher, pair.teacher_chat_template_kwargs),
    ):
        if unread := unread_arguments(model, kwargs):
            notes.append(
                f"the {role}'s chat template does not read {', '.join(unread)} "
                f"({role}_chat_template_kwargs): it changes nothing there"
            )
    if t_templated and pair.teacher_prompt_format:
        notes.append("teacher_prompt_format is not used: the teacher has a chat template")
    elif not t_templated and pair.teacher_prompt_format:
        notes.append("the teacher has no chat template: its context is teacher_prompt_format")


def _where(traj: Trajectory) -> Callable[[int], str]:
    """How an error names message i of the trajectory's conversation."""
    first = len(traj.messages or [])
    if traj.format == "prompt_completion":
        return lambda i: f"prompt[{i}]" if i < first else f"completion[{i - first}]"
    return lambda i: "response" if i == traj.response_index else f"messages[{i}]"


def _prompt_field(traj: Trajectory) -> str:
    """The field of the line that holds its prompt's messages."""
    return "messages" if traj.format == "messages" else "prompt"


def _conversation(
    traj: Trajectory, pair: Models, limits: tuple[TokenLimit, TokenLimit], notes: list[str]
) -> Placement:
    """A conversation's prompt and turns, placed by the student's template (inputs.conversations)."""
    assert traj.conversation is not None and traj.messages is not None
    where = _where(traj)
    if pair.cross_tokenizer:
        raise BadTrajectory(
            "a conversation (several assistant turns, or tool calls) is scored on the student's "
            "token ids, and the teacher has another tokenizer: give it a single response",
            field=where(len(traj.messages)),
        )
    tok = pair.student.tokenizer
    renderer = Renderer(tok, traj.conversation, traj.tools, pair.student_chat_template_kwargs, where)
    placed = place(
        renderer,
        len(traj.messages),
        lambda text: tokenize_within(tok, text, limits[0]),
        lambda text: tokenize_within(tok, text, limits[1]),
    )
    turns = sum(m["role"] == "assistant" for m in traj.conversation[len(traj.messages) :])
    notes.append(
        f"a conversation of {turns} assistant turn{'s' if turns != 1 else ''}, placed by the student's "
        f"chat template: all {len(placed.response_ids)} tokens after the prompt are replayed, the "
        f"student's {sum(placed.response_mask)} scored (system, user and tool turns are context)"
    )
    if _differs(pair):
        notes.append(
            "the teacher's chat template differs from the student's: its context is its own rendering "
            "of the prompt, and it sees the student's rendering of the turns after it (the same ids)"
        )
    return placed


def build_contexts(traj: Trajectory, pair: Models, context: int, response: int) -> Contexts:
    """Both contexts and the response ids for one trajectory (no model forward pass), each
    refused as soon as it is over its limit: `context` tokens for each context (as
    VROLLOUT_MAX_CONTEXT_TOKENS), `response` for the response (VROLLOUT_MAX_RESPONSE_TOKENS).
    A conversation's response is every token after its prompt, with the student's mask and each
    token's message (`inputs.conversations`); a single response is all the student's."""
    student_limit = TokenLimit("student context", context, "VROLLOUT_MAX_CONTEXT_TOKENS")
    teacher_limit = TokenLimit("teacher context", context, "VROLLOUT_MAX_CONTEXT_TOKENS")
    response_limit = TokenLimit("response", response, "VROLLOUT_MAX_RESPONSE_TOKENS")
    notes: list[str] = list(traj.notes)
    privileged = traj.privileged or None
    template = traj.teacher_template or pair.teacher_template
    placed = None
    if traj.format == "token_ids":
        assert traj.prompt_ids is not None
        s_ids = traj.prompt_ids
        t_ids = traj.teacher_prompt_ids or traj.prompt_ids
        student_limit.check(len(s_ids))
        teacher_limit.check(len(t_ids))
        s_text, t_text = _decode(pair.student, s_ids), _decode(pair.teacher, t_ids)
    elif traj.rendered:
        assert traj.messages is not None
        s_ids, s_text, t_ids, t_text = _rendered(
            traj.messages[0]["content"], privileged, pair, notes, (student_limit, teacher_limit), template
        )
    else:
        assert traj.messages is not None
        if traj.conversation is not None:
            placed = _conversation(traj, pair, (student_limit, response_limit), notes)
            s_ids, s_text, templated = placed.prompt_ids, placed.prompt_text, True
        else:
            s_ids, s_text, templated = render_role(
                pair, "student", traj.messages, student_limit, traj.tools, _prompt_field(traj)
            )
            if templated:
                check_prompt_rendered(traj.messages, s_text, _where(traj))
            if traj.tools is not None:
                if not templated:
                    raise BadTrajectory(
                        "tools are rendered by the chat template, and the student's tokenizer has none",
                        field="tools",
                    )
                check_tools_rendered(traj.tools, s_text)
        t_msgs = teacher_messages(traj.messages, privileged, template) if privileged else traj.messages
        t_ids, t_text, t_templated = render_role(
            pair, "teacher", t_msgs, teacher_limit, traj.tools, _prompt_field(traj)
        )
        _templated_notes(pair, templated, t_templated, notes)
    retokenized = False
    response_ids = traj.response_ids if placed is None else placed.response_ids
    if response_ids is None and traj.response_text is not None:
        response_ids = tokenize_within(pair.student.tokenizer, traj.response_text, response_limit)
        retokenized = True
        notes.append("the response was given as text and tokenized with the student's tokenizer")
    if response_ids is not None and not response_ids:
        raise BadTrajectory("the response is empty: there is nothing to replay")
    if response_ids is not None:
        response_limit.check(len(response_ids))
    mask, turns = _layout(traj, placed, response_ids)
    sibling = None if traj.sibling is None else {k: traj.sibling.get(k) for k in ("line", "id")}
    return Contexts(
        s_ids,
        s_text,
        t_ids,
        t_text,
        privileged,
        response_ids,
        retokenized,
        notes,
        traj.teacher_context,
        sibling,
        mask,
        turns,
        None if traj.format == "token_ids" else response_turn(traj),
    )


def _layout(
    traj: Trajectory, placed: Placement | None, response_ids: list[int] | None
) -> tuple[list[int] | None, list[int | None] | None]:
    """(response_mask, turns) of the response: a conversation's as placed; a token-level line's
    mask as given (all ones without one), its turns unknown; a single response all the
    student's, of the message after the prompt. None while the response is still to generate."""
    if placed is not None:
        return placed.response_mask, list(placed.turns)
    if response_ids is None:
        return None, None
    if traj.format == "token_ids":
        return traj.response_mask or [1] * len(response_ids), None
    return [1] * len(response_ids), [response_turn(traj)] * len(response_ids)


def response_turn(traj: Trajectory) -> int | None:
    """The message index of a single response (given, or generated): the message after the prompt.
    None for a prompt given as rendered text (TRL's standard line, verl's dumps): it is not a list
    of messages, so nothing numbers them."""
    return None if traj.rendered else len(traj.messages or [])


def check_ids(name: str, ids: list[int], vocab_size: int) -> None:
    """Token ids must index the shared vocabulary."""
    for i, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise BadTrajectory(
                f"{name}[{i}] = {token} is outside the vocabulary (0..{vocab_size - 1})",
                field=name,
                index=i,
            )
