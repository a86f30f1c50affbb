"""Trajectory parsing: the four formats of docs/formats.md into one `Trajectory`.

Knows nothing about models, tokenizers or HTTP. Every problem is a `BadTrajectory` whose
message names the field (and, for files, the line).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from vrollout.core.errors import BadTrajectory, TooLong

OPTIONAL_STR_FIELDS = ("privileged", "id", "reference_answer")


@dataclass
class Trajectory:
    """One trajectory, normalised. Either text (`messages`) or token ids (`prompt_ids`)."""

    format: str  # prompt_response | messages | prompt_completion | token_ids
    messages: list[dict[str, str]] | None = None  # the prompt as chat messages
    response_text: str | None = None
    prompt_ids: list[int] | None = None
    teacher_prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    privileged: str | None = None
    id: str | None = None
    reference_answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_response(self) -> bool:
        return self.response_text is not None or self.response_ids is not None


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadTrajectory(f"{name} must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise BadTrajectory(f"{name}[{i}] must be an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not role:
            raise BadTrajectory(f"{name}[{i}].role must be a non-empty string")
        if not isinstance(content, str):
            raise BadTrajectory(f"{name}[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def _ids(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BadTrajectory(f"{name} must be a list of integer token ids")
    return list(value)


def parse_trajectory(obj: Any) -> Trajectory:
    """Normalise one trajectory object (already decoded from JSON)."""
    if not isinstance(obj, dict):
        raise BadTrajectory(f"a trajectory must be a JSON object, got {type(obj).__name__}")
    extras: dict[str, Any] = {}
    for key in OPTIONAL_STR_FIELDS:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            if key == "reference_answer" and isinstance(value, int | float):
                value = str(value)  # a numeric answer is compared numerically later
            else:
                raise BadTrajectory(f"{key} must be a string")
        extras[key] = value
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise BadTrajectory("meta must be an object")
    extras["meta"] = meta or {}

    if "response_ids" in obj or "prompt_ids" in obj:
        return _token_level(obj, extras)
    if "messages" in obj:
        msgs = _messages(obj["messages"], "messages")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:  # no answer yet: the student will generate one
            return Trajectory("messages", messages=msgs, **extras)
        if last != len(msgs) - 1:
            raise BadTrajectory("messages: the last assistant message must be the last message")
        if last == 0:
            raise BadTrajectory("messages: no prompt before the assistant's response")
        return Trajectory("messages", messages=msgs[:last], response_text=msgs[last]["content"], **extras)
    if "prompt" not in obj:
        raise BadTrajectory(
            "no trajectory found: give 'prompt' (+ 'response'), 'messages', "
            "'prompt' + 'completion', or 'prompt_ids' + 'response_ids'"
        )
    prompt = obj["prompt"]
    if isinstance(prompt, list):
        msgs = _messages(prompt, "prompt")
        if "completion" not in obj:
            return Trajectory("prompt_completion", messages=msgs, **extras)
        completion = _messages(obj["completion"], "completion")
        if len(completion) != 1 or completion[0]["role"] != "assistant":
            raise BadTrajectory("completion must hold exactly one assistant message")
        return Trajectory(
            "prompt_completion",
            messages=msgs,
            response_text=completion[0]["content"],
            **extras,
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadTrajectory("prompt must be a non-empty string or a list of messages")
    if "completion" in obj:
        raise BadTrajectory("completion needs prompt as a list of messages (TRL format)")
    response = obj.get("response")
    if response is not None and not isinstance(response, str):
        raise BadTrajectory("response must be a string")
    return Trajectory(
        "prompt_response",
        messages=[{"role": "user", "content": prompt}],
        response_text=response,
        **extras,
    )


def _token_level(obj: dict[str, Any], extras: dict[str, Any]) -> Trajectory:
    if "prompt_ids" not in obj:
        raise BadTrajectory("response_ids needs prompt_ids (the student's whole context)")
    prompt_ids = _ids(obj["prompt_ids"], "prompt_ids")
    if not prompt_ids:
        raise BadTrajectory("prompt_ids is empty")
    response_ids = _ids(obj["response_ids"], "response_ids") if "response_ids" in obj else None
    teacher_ids = obj.get("teacher_prompt_ids")
    teacher_ids = _ids(teacher_ids, "teacher_prompt_ids") if teacher_ids is not None else None
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
        **extras,
    )


@dataclass
class LineError:
    line: int
    error: str


def parse_file(data: bytes, max_lines: int) -> tuple[list[tuple[int, Any]], list[LineError]]:
    """Split an upload (JSONL, or one JSON array) into (line number, object) pairs and errors.

    Only decoding happens here; each object is validated with `parse_trajectory` by the caller
    so that a bad line never drops a good neighbour. A JSONL line that is not UTF-8 or not JSON
    (or nested too deeply to parse) is an error of that line. Lines are read one at a time, so
    a file with more than `max_lines` is refused as soon as the limit is passed.
    """
    encoding = next((name for bom, name in BOMS if data.startswith(bom)), None)
    if encoding:
        raise BadTrajectory(f"the file is {encoding} text: save it as UTF-8")
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise BadTrajectory("the file is empty")
    if data.lstrip().startswith(b"["):
        return _json_array(data, max_lines), []
    good: list[tuple[int, Any]] = []
    bad: list[LineError] = []
    for number, raw in enumerate(io.BytesIO(data), start=1):
        if not raw.strip():
            continue
        if len(good) + len(bad) >= max_lines:
            raise TooLong(f"more than the limit of {max_lines} lines (VROLLOUT_MAX_LINES_PER_JOB)")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(
                LineError(number, f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
            )
            continue
        try:
            good.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            bad.append(LineError(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
        except (ValueError, RecursionError) as exc:  # e.g. too many digits, or nested too deeply
            bad.append(LineError(number, f"invalid JSON: {_json_problem(exc)}"))
    return good, bad


BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_SPACE = re.compile(r"[ \t\n\r]*")


def _json_problem(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _json_array(data: bytes, max_lines: int) -> list[tuple[int, Any]]:
    """A JSON array's items one by one (numbered from 1), refused once past `max_lines`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadTrajectory(f"the file is not UTF-8 text (byte {exc.start}, line {line})") from None
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    pos = _SPACE.match(text, text.index("[") + 1).end()
    try:
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                item, pos = decoder.raw_decode(text, pos)
                items.append((len(items) + 1, item))
                if len(items) > max_lines:
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
    return items
