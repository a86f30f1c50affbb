"""Conversations: several assistant turns and tool calls, placed token by token (#25;
docs/formats.md, "Conversations").

Every assistant turn of a conversation is the student's; system, user and tool turns are
context it did not write. Where each turn's tokens lie comes from the student's own chat
template: prefixes of the conversation are rendered as the template renders them (with the
generation prompt where an assistant turn starts, without it where a turn ends), and each must
be an exact prefix of the whole rendering, in text and in tokens. A turn that cannot be placed
so is refused with its index, never guessed.

Knows nothing about models or HTTP: a tokenizer, and functions that tokenize within the
limits, are handed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory

if TYPE_CHECKING:
    from vrollout.schema.requests import Message

# Hostile input: placing a conversation renders it up to each of its messages, work that grows
# with the square of their number (about 5 s for 512 messages of tool calls on Qwen2.5's
# template); a conversation holds at most this many, prompt included.
MAX_MESSAGES = 1_000
TOOL_ROLES = ("tool", "ipython")  # a call's result (`ipython`: Llama 3.1's name for it)
AS_IDS = (
    "give the conversation as token ids instead (prompt_ids, response_ids and response_mask, "
    "as the trainer stored them)"
)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as chat templates take it: fields that are not given are left out (a template
    tests `message.tool_calls is defined`, and iterating a null fails), a null content is ""."""
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
    for key in ("tool_call_id", "name", "reasoning_content"):
        if (value := getattr(message, key)) is not None:
            out[key] = value
    return out


def is_plain(message: Message) -> bool:
    """Content only: a single response that replays as its text, as before conversations."""
    return not message.tool_calls and message.reasoning_content is None


def check_messages(messages: list[Message], where: Callable[[int], str]) -> None:
    """The rules across a conversation's messages, each broken one an error naming the message
    (`where(i)`, e.g. `messages[3]`) and the field."""
    call_ids: list[str] = []  # in order, for the error's last few
    known: set[str] = set()  # the same, to look an answer's id up at once
    calls = 0
    for i, message in enumerate(messages):
        at = where(i)
        if message.role == "assistant":
            if message.content is None and not message.tool_calls:
                raise BadTrajectory(
                    f"{at}.content: an assistant message needs content or tool_calls",
                    field=f"{at}.content",
                    turn=i,
                )
        elif message.tool_calls:
            raise BadTrajectory(
                f"{at}.tool_calls: only an assistant message makes tool calls, not a {message.role} message",
                field=f"{at}.tool_calls",
                turn=i,
            )
        elif message.content is None:
            raise BadTrajectory(
                f"{at}.content is required (a {message.role} message)", field=f"{at}.content", turn=i
            )
        if message.role in TOOL_ROLES:
            if not calls:
                raise BadTrajectory(
                    f"{at}.role: a {message.role} message with no tool call before it (an assistant message "
                    "with tool_calls)",
                    field=f"{at}.role",
                    turn=i,
                )
            if message.tool_call_id is not None and message.tool_call_id not in known:
                known = ", ".join(call_ids[-5:]) or "none has an id"
                raise BadTrajectory(
                    f"{at}.tool_call_id {message.tool_call_id!r} matches no earlier tool call ({known})",
                    field=f"{at}.tool_call_id",
                    turn=i,
                )
        for call in message.tool_calls or []:
            calls += 1
            if call.id is not None:
                call_ids.append(call.id)
                known.add(call.id)


# Placement ------------------------------------------------------------------------------------


@dataclass
class Placement:
    """A conversation as token ids: the prompt (to the first assistant turn's generation prompt)
    and everything after it, with the student's mask and each token's message index."""

    prompt_ids: list[int]
    prompt_text: str
    response_ids: list[int]
    response_mask: list[int]
    turns: list[int]


@dataclass(frozen=True)
class Piece:
    """Characters `start:end` of the whole rendering, of message `turn`: the student's turn
    (`student`) or context (a tool or user turn, an assistant turn's header)."""

    start: int
    end: int
    turn: int
    student: bool


class Renderer:
    """The student's chat template over prefixes of one conversation."""

    def __init__(
        self,
        tokenizer: Any,
        conversation: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        template_kwargs: dict[str, Any] | None,
        where: Callable[[int], str],
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise BadTrajectory(
                "a conversation (several assistant turns, or tool calls) is placed by the student's "
                f"chat template, and its tokenizer has none; {AS_IDS}",
                field=where(0),
            )
        self.tokenizer, self.conversation, self.where = tokenizer, conversation, where
        self.kwargs = dict(template_kwargs or {})
        if tools is not None:
            self.kwargs["tools"] = tools

    def __call__(self, upto: int, generation_prompt: bool) -> str:
        """The rendering of messages[:upto] (the generation prompt after them, or not)."""
        try:
            return self.tokenizer.apply_chat_template(
                self.conversation[:upto],
                tokenize=False,
                add_generation_prompt=generation_prompt,
                **self.kwargs,
            )
        except Exception as exc:  # a template's raise_exception, or a tokenizer that takes no tools
            turn = max(upto - 1, 0)
            raise BadTrajectory(
                f"{self.where(turn)}: the student's chat template does not render the conversation "
                f"up to this message ({type(exc).__name__}: {exc})",
                field=self.where(turn),
                turn=turn,
            ) from None


def _not_placed(where: str, turn: int, why: str) -> BadTrajectory:
    return BadTrajectory(
        f"{where}: this turn cannot be placed exactly in the student's chat template: {why}; {AS_IDS}",
        field=where,
        turn=turn,
    )


def ends(render: Renderer, prompt_len: int) -> tuple[str, str]:
    """(whole rendering, prompt text): the conversation rendered whole, and up to its first
    assistant turn with the generation prompt, which must be how the whole begins."""
    whole = render(len(render.conversation), False)
    prompt = render(prompt_len, True)
    if not whole.startswith(prompt):
        raise _not_placed(
            render.where(prompt_len),
            prompt_len,
            "the prompt with the generation prompt is not how the whole conversation begins",
        )
    return whole, prompt


def pieces(render: Renderer, prompt_len: int, whole: str, prompt: str) -> list[Piece]:
    """The pieces after the prompt: where each message after the prompt starts and ends in the
    whole rendering (`ends`), found by rendering prefixes."""
    conversation, where = render.conversation, render.where
    found: list[Piece] = []
    pos = len(prompt)
    for k in range(prompt_len, len(conversation)):
        student = conversation[k]["role"] == "assistant"
        if student and k > prompt_len:  # its header (the generation prompt) is context
            head = render(k, True)
            if not whole.startswith(head) or len(head) < pos:
                raise _not_placed(where(k), k, "the generation prompt before it is not where it starts")
            found.append(Piece(pos, len(head), k, False))
            pos = len(head)
        end = len(whole)
        if k < len(conversation) - 1:
            upto = render(k + 1, False)
            if not whole.startswith(upto) or len(upto) < pos:
                raise _not_placed(
                    where(k), k, "the conversation rendered up to it is not a prefix of the whole rendering"
                )
            end = len(upto)
        if student and end == pos:
            raise _not_placed(where(k), k, "the template renders nothing for it")
        found.append(Piece(pos, end, k, student))
        pos = end
    return found


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return ids | {int(i) for i, token in added.items() if getattr(token, "special", False)}


def student_mask(ids: list[int], specials: set[int], decode: Callable[[list[int]], str]) -> list[int]:
    """1 on a student turn's tokens up to and including the last special token of its rendering
    (the end-of-turn token the template puts after it), 0 after (a trailing newline). A template
    with no special token there: up to the last token that is not whitespace."""
    last = next((j for j in range(len(ids) - 1, -1, -1) if ids[j] in specials), None)
    if last is None:
        last = next((j for j in range(len(ids) - 1, -1, -1) if decode([ids[j]]).strip()), len(ids) - 1)
    return [1] * (last + 1) + [0] * (len(ids) - last - 1)


def _arguments_keys(arguments: Any) -> list[str] | None:
    """The argument names of a call (None: its arguments are a string that is no JSON object)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):  # not JSON, or nested past what the reader follows
            return None
    return [str(key) for key in arguments] if isinstance(arguments, dict) else None


def check_prompt_rendered(messages: list[dict[str, Any]], text: str, where: Callable[[int], str]) -> None:
    """The tool calls of a prompt's assistant messages show in the prompt's rendering (`text`).
    Their reasoning may not: templates such as Qwen3's leave earlier reasoning out of what the
    model sees."""
    for i, message in enumerate(messages):
        if message.get("tool_calls"):
            check_turn_rendered(message, text, where(i), i, reasoning=False)


def check_turn_rendered(
    message: dict[str, Any], text: str, where: str, turn: int, reasoning: bool = True
) -> None:
    """What the student wrote in an assistant turn shows in its rendering (`text`): its
    reasoning, and each tool call's name and arguments (their names, or the string as given).
    A template that drops them would give ids other than those the model saw."""
    thought = (message.get("reasoning_content") or "").strip() if reasoning else ""
    if thought and thought not in text:
        raise BadTrajectory(
            f"{where}.reasoning_content: the student's chat template drops it (its rendering of the "
            "turn lacks the reasoning): give the reasoning in content as the model wrote it (e.g. "
            f"<think>...</think>), or {AS_IDS}",
            field=f"{where}.reasoning_content",
            turn=turn,
        )
    for i, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        keys = _arguments_keys(function["arguments"])
        if function["name"] not in text:
            lost, what = "function.name", f"the call's name {function['name']!r}"
        elif keys is None and function["arguments"] not in text:
            lost, what = "function.arguments", "the call's arguments"
        elif keys is not None and (missing := [k for k in keys if k not in text]):
            lost, what = "function.arguments", f"the call's argument {missing[0]!r}"
        else:
            continue
        field = f"{where}.tool_calls[{i}].{lost}"
        raise BadTrajectory(
            f"{field}: the student's chat template drops this tool call (its rendering of the turn "
            f"lacks {what}): the ids would not be those the model saw; use a template that renders "
            f"tool calls, or {AS_IDS}",
            field=field,
            turn=turn,
        )


def check_tools_rendered(tools: list[dict[str, Any]] | None, text: str) -> None:
    """Each tool offered shows (by name) in the rendering: a template that ignores `tools`
    would give a prompt other than the one the model saw."""
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = function.get("name")
        if isinstance(name, str) and name and name not in text:
            raise BadTrajectory(
                f"tools[{i}]: the student's chat template does not render the tools it is given "
                f"({name!r} is not in its rendering)",
                field=f"tools[{i}]",
            )


def place(
    render: Renderer,
    prompt_len: int,
    encode_prompt: Callable[[str], list[int]],
    encode_response: Callable[[str], list[int]],
) -> Placement:
    """The conversation as the student's template renders it, cut into the prompt and the
    response: response ids (every token after the prompt), the student's mask and each token's
    message. `encode_prompt`/`encode_response` tokenize within the context and response limits.
    Every cut must fall between tokens of the whole rendering (each prefix's tokens are those
    of the whole), else the turn there is refused."""
    tokenizer, where = render.tokenizer, render.where

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    whole, prompt = ends(render, prompt_len)
    # within the limits before the prefixes are rendered (one rendering per message, each as
    # long as the conversation up to it)
    prompt_ids = encode_prompt(prompt)
    response_ids = encode_response(whole[len(prompt) :])
    found = pieces(render, prompt_len, whole, prompt)
    check_tools_rendered(render.kwargs.get("tools"), prompt)
    check_prompt_rendered(render.conversation[:prompt_len], prompt, where)
    for piece in found:
        if piece.student:
            check_turn_rendered(
                render.conversation[piece.turn], whole[piece.start : piece.end], where(piece.turn), piece.turn
            )
    if encode(whole) != prompt_ids + response_ids:
        raise _not_placed(
            where(prompt_len),
            prompt_len,
            "its first tokens merge with the end of the prompt in the whole rendering",
        )
    specials = _special_ids(tokenizer)
    mask: list[int] = []
    turns: list[int] = []
    for piece in found:
        ids = encode(whole[piece.start : piece.end])
        if response_ids[len(mask) : len(mask) + len(ids)] != ids:
            raise _not_placed(
                where(piece.turn),
                piece.turn,
                "its last tokens merge with what follows in the whole rendering",
            )
        mask += student_mask(ids, specials, tokenizer.decode) if piece.student else [0] * len(ids)
        turns += [piece.turn] * len(ids)
    if not any(mask):
        raise BadTrajectory(
            "the conversation has no token of the student's to score", field=where(prompt_len)
        )
    return Placement(prompt_ids, prompt, response_ids, mask, turns)
