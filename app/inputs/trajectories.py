"""Trajectory parsing: the four formats of docs/formats.md into one `Trajectory` (a
conversation's turns are placed later, by `pipeline.contexts` with `inputs.conversations`).

Knows nothing about models, tokenizers or HTTP. Every problem is a `BadTrajectory` whose
message names the field (and, for files, the line).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory, TooLong
from vrollout.inputs.conversations import MAX_MESSAGES, check_messages, is_plain, message_dict
from vrollout.schema.requests import PedagogicalRequest

if TYPE_CHECKING:
    from vrollout.schema.requests import AnalyzeRequest, Message


@dataclass
class Trajectory:
    """One trajectory, normalised. Either text (`messages`) or token ids (`prompt_ids`)."""

    format: str  # prompt_response | messages | prompt_completion | token_ids
    messages: list[dict[str, Any]] | None = None  # the prompt as chat messages
    response_text: str | None = None
    prompt_ids: list[int] | None = None
    teacher_prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    privileged: str | None = None
    id: str | None = None
    reference_answer: str | None = None
    score: float | None = None  # from a training log, kept as given (docs/metrics.md)
    correct: bool | None = None  # the log's own verdict: used as is, never re-checked
    step: int | str | None = None  # training step or checkpoint name: the drift views group by it
    meta: dict[str, Any] = field(default_factory=dict)
    # The prompt (one user message holding it) is the text the model saw, template applied:
    # tokenized as it is, never templated again (inputs.rendered).
    rendered: bool = False
    # Which text the teacher is given (inputs.teacher_context.resolve sets privileged from these).
    teacher_context: str = "privileged"
    feedback: str | None = None
    teacher_template: str | None = None  # None: the settings' template
    sibling: dict[str, Any] | None = None  # {"response", "line", "id"}
    notes: list[str] = field(default_factory=list)
    # A conversation (several assistant turns, or tool calls): every message as given, tool_calls
    # and all (`messages` is then its prompt, the messages before the first assistant message).
    conversation: list[dict[str, Any]] | None = None
    tools: list[Any] | None = None  # the conversation-level tool schemas, for the chat template
    response_mask: list[int] | None = None  # token-level: 1 where the policy wrote the token
    final_answer: str | None = None  # the last assistant message's content: what verdicts check
    # The conversation's index of a last turn given as the `response` field (errors name it so)
    response_index: int | None = None

    @property
    def has_response(self) -> bool:
        return (
            self.response_text is not None or self.response_ids is not None or self.conversation is not None
        )


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    return [message_dict(m) for m in messages]


def _at(
    field: str, first: int = 0, after: str | None = None, extra: int | None = None
) -> Callable[[int], str]:
    """How an error names message i of a conversation: `field[i]`; with `after`, the messages from
    index `first` on are `after[i - first]` (TRL's prompt + completion); `extra`: the index of a
    last turn given as the `response` field."""

    def where(i: int) -> str:
        if i == extra:
            return "response"
        return f"{after}[{i - first}]" if after is not None and i >= first else f"{field}[{i}]"

    return where


def to_trajectory(request: AnalyzeRequest | PedagogicalRequest) -> Trajectory:
    """The trajectory of a validated request (`inputs.validation`): which of the four formats it
    is, and the rules across fields. Types, roles and sizes were checked by the model."""
    reference = request.reference_answer  # a numeric answer is compared numerically later
    sibling = getattr(request, "sibling", None)
    extras: dict[str, Any] = {
        "privileged": request.privileged,
        "id": request.id,
        "reference_answer": None if reference is None else str(reference),
        # A pedagogical request has none of these three
        "score": getattr(request, "score", None),
        "correct": getattr(request, "correct", None),
        "step": getattr(request, "step", None),
        "meta": request.meta or {},
        # A pedagogical request has none of these four (its teacher context is the privileged one)
        "teacher_context": getattr(request, "teacher_context", None) or "privileged",
        "feedback": getattr(request, "feedback", None),
        "teacher_template": getattr(request, "teacher_template", None),
        "sibling": None if sibling is None else sibling.model_dump(),
        "tools": getattr(request, "tools", None),  # a pedagogical request has no tools
    }
    traj = _trajectory(request, extras)
    if traj.conversation is not None and isinstance(request, PedagogicalRequest):
        raise BadTrajectory(
            "a pedagogical rollout needs a single turn: this line is a conversation (several "
            "assistant turns, or tool calls), and its tool turns would need an environment to answer "
            "the teacher's tokens; give the prompt alone (the messages before the first assistant one)",
            field="prompt" if request.messages is None else "messages",
        )
    if traj.final_answer is None and traj.conversation is None:
        traj.final_answer = traj.response_text
    return traj


def _trajectory(request: AnalyzeRequest | PedagogicalRequest, extras: dict[str, Any]) -> Trajectory:
    response = getattr(request, "response", None)  # a pedagogical request has no response
    response_ids = getattr(request, "response_ids", None)
    completion = getattr(request, "completion", None)
    if getattr(request, "rendered", False):
        return _rendered(request, extras)
    if response_ids is not None or request.prompt_ids is not None:
        mask = getattr(request, "response_mask", None)
        return _token_level(request.prompt_ids, response_ids, request.teacher_prompt_ids, mask, extras)
    if getattr(request, "response_mask", None) is not None:
        raise BadTrajectory(
            "response_mask goes with response_ids (token ids); a conversation's mask comes from its "
            "messages (every assistant turn is the student's)",
            field="response_mask",
        )
    if request.messages is not None:
        return _chat(request.messages, response, completion, extras)
    prompt = request.prompt
    if prompt is None:
        raise BadTrajectory(
            "no trajectory found: give 'prompt' (+ 'response'), 'messages', "
            "'prompt' + 'completion', or 'prompt_ids' + 'response_ids'"
        )
    if isinstance(prompt, list):
        return _prompt_completion(prompt, response, completion, extras)
    if not prompt.strip():
        raise BadTrajectory("prompt must be a non-empty string or a list of messages")
    if isinstance(completion, list):
        raise BadTrajectory(
            "completion as messages needs prompt as a list of messages (TRL's conversational format); "
            "after a text prompt give completion as text (TRL's standard format)",
            field="completion",
        )
    if completion is not None:
        return _standard(prompt, response, completion, extras)
    return Trajectory(
        "prompt_response", messages=[{"role": "user", "content": prompt}], response_text=response, **extras
    )


def _chat(
    messages: list[Message], response: str | None, completion: Any, extras: dict[str, Any]
) -> Trajectory:
    """A `messages` line: the prompt is every message before the first assistant one; a single
    plain assistant message at the end is the response as text (as before conversations), more
    turns or tool calls make a conversation."""
    if completion is not None:
        raise BadTrajectory("completion goes with prompt as a list of messages, not with messages")
    where = _at("messages", extra=len(messages) if response is not None else None)
    check_messages(messages, where)
    msgs = _messages(messages)
    first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    if first == 0:
        raise BadTrajectory("messages: no prompt before the assistant's response")
    if response is not None:  # the conversation so far, and its last turn as text
        if messages[-1].role == "assistant":
            raise BadTrajectory(
                "response: the messages end with an assistant message already (give one response)",
                field="response",
            )
        if first is None:
            return Trajectory("messages", messages=msgs, response_text=response, **extras)
        traj = _conversation("messages", [*msgs, {"role": "assistant", "content": response}], first, extras)
        traj.response_index = len(msgs)
        return traj
    if first is None:  # no answer yet: the student will generate one
        return Trajectory("messages", messages=msgs, **extras)
    if first == len(messages) - 1 and is_plain(messages[first]):
        return Trajectory("messages", messages=msgs[:first], response_text=messages[first].content, **extras)
    return _conversation("messages", msgs, first, extras)


def _prompt_completion(
    prompt: list[Message], response: str | None, completion: Any, extras: dict[str, Any]
) -> Trajectory:
    """TRL's conversational prompt-completion: the prompt as messages, the completion as the
    assistant's messages (one answer, or tool calls, tool results and answers)."""
    if not prompt:
        raise BadTrajectory("prompt must be a non-empty string or a list of messages")
    if completion is not None and response is not None:
        raise BadTrajectory("give the response once: completion or response, not both", field="response")
    if isinstance(completion, str):
        raise BadTrajectory(
            "completion as text goes with prompt as text (TRL's standard format); after prompt as "
            "messages give completion as a list of messages",
            field="completion",
        )
    if completion is None:  # the response as text, or none: the student will generate one
        check_messages(prompt, _at("prompt"))
        return Trajectory("prompt_completion", messages=_messages(prompt), response_text=response, **extras)
    check_messages([*prompt, *completion], _at("prompt", len(prompt), "completion"))
    if completion[0].role != "assistant":
        raise BadTrajectory(
            "completion[0] must be an assistant message (the completion is the student's)",
            field="completion[0].role",
        )
    if len(completion) == 1 and is_plain(completion[0]):
        return Trajectory(
            "prompt_completion", messages=_messages(prompt), response_text=completion[0].content, **extras
        )
    conversation = _messages([*prompt, *completion])
    return _conversation("prompt_completion", conversation, len(prompt), extras, "completion")


def _conversation(
    shape: str,
    conversation: list[dict[str, Any]],
    first: int,
    extras: dict[str, Any],
    after: str | None = None,
) -> Trajectory:
    """A conversation: its prompt (the messages before index `first`), every message (for
    `pipeline.contexts` to place turn by turn) and its last assistant content (for verdicts)."""
    if len(conversation) > MAX_MESSAGES:
        field = after or "messages"
        raise BadTrajectory(
            f"{field}: a conversation holds at most {MAX_MESSAGES} messages (prompt included), this "
            f"one {len(conversation)}: each turn is placed by rendering the conversation up to it",
            field=field,
        )
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return Trajectory(
        shape,
        messages=conversation[:first],
        conversation=conversation,
        final_answer=conversation[last]["content"],
        **extras,
    )


def _standard(prompt: str, response: str | None, completion: str, extras: dict[str, Any]) -> Trajectory:
    """TRL's standard prompt-completion line (`{"prompt": str, "completion": str}`), read as TRL
    reads it: the prompt is the exact text the model saw (no chat template), the completion the
    response."""
    if response is not None:
        raise BadTrajectory("give the response once: completion or response, not both", field="response")
    return Trajectory(
        "prompt_completion",
        messages=[{"role": "user", "content": prompt}],
        response_text=completion,
        rendered=True,
        notes=["TRL's standard format (prompt and completion as text): the prompt is the text the model saw"],
        **extras,
    )


def _rendered(request: AnalyzeRequest | PedagogicalRequest, extras: dict[str, Any]) -> Trajectory:
    """A prompt given as the text the model saw (`rendered: true`): only a string prompt, with
    the response as text (or none, to generate)."""
    if getattr(request, "response_ids", None) is not None or request.prompt_ids is not None:
        raise BadTrajectory(
            "rendered applies to a prompt given as text; token ids (prompt_ids, response_ids) are "
            "exact already: drop rendered",
            field="rendered",
        )
    if request.messages is not None or isinstance(request.prompt, list):
        raise BadTrajectory(
            "rendered: true needs prompt as one string, the text the model saw (chat template "
            "applied); messages are rendered by the chat template: drop rendered",
            field="rendered",
        )
    completion = getattr(request, "completion", None)
    if isinstance(completion, list):
        raise BadTrajectory(
            "rendered: give the response as text (response, or completion as a string), not as messages",
            field="rendered",
        )
    if extras["tools"] is not None:
        raise BadTrajectory(
            "tools are rendered by the chat template: a rendered prompt has them already (drop tools)",
            field="tools",
        )
    prompt = request.prompt
    if prompt is None or not prompt.strip():
        raise BadTrajectory("rendered: true needs prompt, a non-empty string", field="prompt")
    if completion is not None:
        return _standard(prompt, getattr(request, "response", None), completion, extras)
    return Trajectory(
        "prompt_response",
        messages=[{"role": "user", "content": prompt}],
        response_text=getattr(request, "response", None),
        rendered=True,
        **extras,
    )


def _token_level(
    prompt_ids: list[int] | None,
    response_ids: list[int] | None,
    teacher_ids: list[int] | None,
    mask: list[int] | None,
    extras: dict[str, Any],
) -> Trajectory:
    if extras["tools"] is not None:
        raise BadTrajectory(
            "tools are rendered by the chat template: token ids have them already (drop tools)",
            field="tools",
        )
    if mask is not None:
        if response_ids is None:
            raise BadTrajectory(
                "response_mask goes with response_ids (one value per token)", field="response_mask"
            )
        if len(mask) != len(response_ids):
            raise BadTrajectory(
                f"response_mask has {len(mask)} values and response_ids {len(response_ids)} tokens: give "
                "one value per response token",
                field="response_mask",
            )
        if not any(mask):
            raise BadTrajectory(
                "response_mask is all 0: no token of the policy's to score", field="response_mask"
            )
    if prompt_ids is None:
        raise BadTrajectory("response_ids needs prompt_ids (the student's whole context)")
    if not prompt_ids:
        raise BadTrajectory("prompt_ids is empty")
    if teacher_ids is not None and not teacher_ids:
        raise BadTrajectory("teacher_prompt_ids is empty")
    if extras["privileged"] and teacher_ids is None:
        raise BadTrajectory(
            "privileged text cannot be spliced into token ids: give teacher_prompt_ids "
            "(the teacher's context with the privileged info already in it)"
        )
    return Trajectory(
        "token_ids",
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        teacher_prompt_ids=teacher_ids,
        response_mask=mask,
        **extras,
    )


@dataclass
class LineError:
    line: int
    error: str


def parse_file(
    data: bytes, max_lines: int, max_line_bytes: int | None = None
) -> tuple[list[tuple[int, Any]], list[LineError]]:
    """Split an upload (JSONL, or one JSON array) into (line number, object) pairs and errors.

    Only decoding happens here; each object is validated (`inputs.validation`) by the caller so
    that a bad line never drops a good neighbour. A JSONL line that is not UTF-8 or not JSON
    (or nested too deeply to parse), or longer than `max_line_bytes` (measured, never parsed),
    is an error of that line. Lines are read one at a time, so a file with more than
    `max_lines` is refused as soon as the limit is passed.
    """
    check_encoding(data)
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise BadTrajectory("the file is empty")
    if data.lstrip().startswith(b"["):
        return _json_array(data, max_lines, max_line_bytes)
    good: list[tuple[int, Any]] = []
    bad: list[LineError] = []
    for number, raw in enumerate(io.BytesIO(data), start=1):
        if not raw.strip():
            continue
        if len(good) + len(bad) >= max_lines:
            raise TooLong(f"more than the limit of {max_lines} lines (VROLLOUT_MAX_LINES_PER_JOB)")
        decoded = decode_line(number, raw, max_line_bytes)
        if isinstance(decoded, LineError):
            bad.append(decoded)
        else:
            good.append((number, decoded))
    return good, bad


# Objects and arrays one line may open. Each costs Python 56 bytes or more for its 2 bytes of
# text: a line of 8 MB of `[],` would take about 25 times its size in memory once decoded. Counted
# before decoding, as brackets (those inside strings too: an upper bound, generous for real lines).
MAX_LINE_CONTAINERS = 200_000


def decode_line(number: int, raw: bytes, max_line_bytes: int | None) -> Any:
    """One JSONL line (`raw`, not blank) as its object, or the `LineError` that says why not:
    longer than `max_line_bytes` (measured, never parsed), more than MAX_LINE_CONTAINERS objects
    and arrays (counted, never parsed), not UTF-8, or not JSON."""
    if max_line_bytes is not None and len(raw.rstrip(b"\r\n")) > max_line_bytes:
        return LineError(number, _over(len(raw.rstrip(b"\r\n")), max_line_bytes, "line"))
    if (containers := raw.count(b"[") + raw.count(b"{")) > MAX_LINE_CONTAINERS:
        return LineError(
            number,
            f"{containers} JSON objects and arrays (brackets), over the limit of {MAX_LINE_CONTAINERS}",
        )
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(number, f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return LineError(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
    except (ValueError, RecursionError) as exc:  # e.g. too many digits, or nested too deeply
        return LineError(number, f"invalid JSON: {_json_problem(exc)}")


def check_encoding(head: bytes) -> None:
    """Refuse a file (given by its first bytes) that is UTF-16 or UTF-32 text."""
    encoding = next((name for bom, name in BOMS if head.startswith(bom)), None)
    if encoding:
        raise BadTrajectory(f"the file is {encoding} text: save it as UTF-8")


BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_SPACE = re.compile(r"[ \t\n\r]*")


def _json_problem(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _over(size: int, limit: int, what: str) -> str:
    return f"the {what} is {size} bytes, over the limit of {limit} (VROLLOUT_MAX_LINE_BYTES)"


def _json_array(
    data: bytes, max_lines: int, max_line_bytes: int | None
) -> tuple[list[tuple[int, Any]], list[LineError]]:
    """A JSON array's items one by one (numbered from 1), refused once past `max_lines`. An item
    longer than `max_line_bytes` is that item's error."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadTrajectory(f"the file is not UTF-8 text (byte {exc.start}, line {line})") from None
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    bad: list[LineError] = []
    pos = _SPACE.match(text, text.index("[") + 1).end()
    try:
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                start = pos
                item, pos = decoder.raw_decode(text, pos)
                number = len(items) + len(bad) + 1
                if max_line_bytes is not None and (size := len(text[start:pos].encode())) > max_line_bytes:
                    bad.append(LineError(number, _over(size, max_line_bytes, "trajectory")))
                else:
                    items.append((number, item))
                if number > max_lines:
                    raise TooLong(
                        f"more than the limit of {max_lines} trajectories (VROLLOUT_MAX_LINES_PER_JOB)"
                    )
                pos = _SPACE.match(text, pos).end()
                if text.startswith("]", pos):
                    pos += 1
                    break
                if not text.startswith(",", pos):
                    raise json.JSONDecodeError("expected ',' or ']'", text, pos)
                pos = _SPACE.match(text, pos + 1).end()
    except json.JSONDecodeError as exc:
        raise BadTrajectory(f"invalid JSON array: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        raise BadTrajectory(f"invalid JSON array: {_json_problem(exc)}") from None
    if text[pos:].strip():
        raise BadTrajectory("invalid JSON array: extra data after the closing ']'")
    return items, bad
