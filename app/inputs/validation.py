"""One validation path: the request models with this app's limits, and their errors in words.

API bodies (the routes are bound to `RequestModels`, so `/docs` shows the bounds), uploaded
lines, the CLI's files and the Python API (`Analyzer.prepare`) all pass through the same models.
Text is refused by its length here, before anything is tokenized. Files differ in one way: an
unknown key is kept (in `meta`, with a warning) unless it is a near miss of a field. No HTTP,
no torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, create_model
from vrollout.errors import BadTrajectory, TooLong, VRError
from vrollout.schema.requests import (
    AnalyzeRequest,
    GenerationOptions,
    Message,
    PedagogicalRequest,
    SiblingResponse,
    TokenId,
    ToolCall,
    ToolFunction,
)

if TYPE_CHECKING:
    from vrollout.config import Settings
    from vrollout.inputs.trajectories import Trajectory

M = TypeVar("M", bound=BaseModel)
CONTEXT_CHARS = "VROLLOUT_MAX_CONTEXT_TOKENS x VROLLOUT_CHARS_PER_TOKEN"
RESPONSE_CHARS = "VROLLOUT_MAX_RESPONSE_TOKENS x VROLLOUT_CHARS_PER_TOKEN"
# The setting behind each bound that depends on the settings (a field path, indices as []).
SETTING_OF = {
    "prompt": CONTEXT_CHARS,
    "prompt[].content": CONTEXT_CHARS,
    "messages[].content": f"{CONTEXT_CHARS}, or {RESPONSE_CHARS} if larger",
    "messages[].reasoning_content": f"{CONTEXT_CHARS}, or {RESPONSE_CHARS} if larger",
    "completion": RESPONSE_CHARS,
    "completion[].content": f"{CONTEXT_CHARS}, or {RESPONSE_CHARS} if larger",
    "completion[].reasoning_content": f"{CONTEXT_CHARS}, or {RESPONSE_CHARS} if larger",
    "prompt[].reasoning_content": f"{CONTEXT_CHARS}, or {RESPONSE_CHARS} if larger",
    "response_mask": "VROLLOUT_MAX_RESPONSE_TOKENS",
    "privileged": CONTEXT_CHARS,
    "id": CONTEXT_CHARS,
    "response": RESPONSE_CHARS,
    "reference_answer": RESPONSE_CHARS,
    "prompt_ids": "VROLLOUT_MAX_CONTEXT_TOKENS",
    "teacher_prompt_ids": "VROLLOUT_MAX_CONTEXT_TOKENS",
    "response_ids": "VROLLOUT_MAX_RESPONSE_TOKENS",
    "feedback": CONTEXT_CHARS,
    "teacher_template": CONTEXT_CHARS,
    "sibling.response": RESPONSE_CHARS,
    "top_k": "VROLLOUT_MAX_TOP_K",
    "continuation_tokens": "VROLLOUT_MAX_CONTINUATION_TOKENS",
    "recovery_max_new_tokens": "VROLLOUT_MAX_NEW_TOKENS",
    "generation.max_new_tokens": "VROLLOUT_MAX_NEW_TOKENS",
}


@dataclass(frozen=True)
class Limits:
    """The settings that bound a request."""

    max_top_k: int
    max_continuation_tokens: int
    max_new_tokens: int
    max_context_tokens: int
    max_response_tokens: int
    chars_per_token: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @property
    def context_chars(self) -> int:
        return self.max_context_tokens * self.chars_per_token

    @property
    def response_chars(self) -> int:
        return self.max_response_tokens * self.chars_per_token

    @property
    def longest_text(self) -> int:
        """Characters of the longest text any field allows."""
        return max(self.context_chars, self.response_chars)


@dataclass(frozen=True)
class RequestModels:
    """`AnalyzeRequest` and `PedagogicalRequest` with one set of limits."""

    limits: Limits
    analyze: type[AnalyzeRequest]
    pedagogical: type[PedagogicalRequest]

    def bindings(self) -> dict[type[BaseModel], type[BaseModel]]:
        """Each base model (as the routes declare it) and its bounded version."""
        return {AnalyzeRequest: self.analyze, PedagogicalRequest: self.pedagogical}


def request_models(settings: Settings) -> RequestModels:
    """The request models with these settings' limits (the same classes for equal limits)."""
    return _models(Limits.of(settings))


def _narrow(base: type[M], **types: Any) -> type[M]:
    """`base` with some fields' types replaced (bounds added); defaults and descriptions kept."""
    narrowed = {name: (tp, base.model_fields[name]) for name, tp in types.items()}
    return create_model(
        base.__name__, __base__=base, __module__=base.__module__, __doc__=base.__doc__, **narrowed
    )


@lru_cache(maxsize=32)
def _models(limits: Limits) -> RequestModels:
    def text(chars: int) -> Any:
        return Annotated[str, Field(max_length=chars)]

    def ids(tokens: int) -> Any:
        return Annotated[list[TokenId] | None, Field(max_length=tokens)]

    def at_most(bound: int, tp: Any = int | None) -> Any:
        return Annotated[tp, Field(le=bound)]

    context, response = text(limits.context_chars), text(limits.response_chars)
    # A message may be the response (the last assistant message): its cap is the larger one, and
    # the prompt's messages together are held to the context's (`check_lengths`).
    longest = text(max(limits.context_chars, limits.response_chars))
    message = _narrow(Message, content=longest | None, reasoning_content=longest | None)
    generation = _narrow(GenerationOptions, max_new_tokens=at_most(limits.max_new_tokens))
    shared = {
        "prompt": context | list[message] | None,  # type: ignore[valid-type]
        "messages": list[message] | None,  # type: ignore[valid-type]
        "prompt_ids": ids(limits.max_context_tokens),
        "teacher_prompt_ids": ids(limits.max_context_tokens),
        "privileged": context | None,
        "id": context | None,
        "reference_answer": response | int | float | None,
        "generation": generation | None,  # type: ignore[valid-type]
    }
    analyze = _narrow(
        AnalyzeRequest,
        **shared,
        response=response | None,
        completion=response | Annotated[list[message], Field(min_length=1)] | None,  # type: ignore[valid-type]
        response_ids=ids(limits.max_response_tokens),
        response_mask=Annotated[
            list[Annotated[int, Field(ge=0, le=1)]] | None, Field(max_length=limits.max_response_tokens)
        ],
        feedback=context | None,
        teacher_template=context | None,
        sibling=_narrow(SiblingResponse, response=response) | None,  # type: ignore[operator]
        top_k=at_most(limits.max_top_k),
        continuation_tokens=at_most(limits.max_continuation_tokens, int),
        recovery_max_new_tokens=at_most(limits.max_new_tokens),
    )
    return RequestModels(limits, analyze, _narrow(PedagogicalRequest, **shared))


def validate(model: type[M], obj: Any) -> M:
    """`obj` (a JSON object as a dict, or a request already validated) as `model`, or the
    request's error: `TooLong` (413) for text or ids over their cap, else `BadTrajectory`."""
    if isinstance(obj, model):
        return obj
    if isinstance(obj, BaseModel):  # validated with other limits: check again with these
        obj = obj.model_dump(exclude_unset=True)
    if not isinstance(obj, Mapping):
        raise BadTrajectory(f"a trajectory must be a JSON object, got {type(obj).__name__}")
    try:
        return model.model_validate(dict(obj))
    except ValidationError as exc:
        raise error_of(exc.errors(include_url=False), model) from None


def error_of(errors: Sequence[Mapping[str, Any]], model: type[BaseModel] | None = None) -> VRError:
    status, message, details = describe(errors, model)
    return (TooLong if status == 413 else BadTrajectory)(message, field=details[0]["field"])


def _chars(message: Mapping[str, Any]) -> int:
    """Characters of a message's text: content, reasoning, and its tool calls."""
    calls = message.get("tool_calls") or []
    return (
        len(message["content"])
        + len(message.get("reasoning_content") or "")
        + sum(len(call["function"]["name"]) + len(_as_text(call["function"]["arguments"])) for call in calls)
    )


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def check_lengths(traj: Trajectory, limits: Limits) -> None:
    """The caps on whole contexts: a prompt's messages (with the tools and the privileged info)
    together, and a response (the text, or a conversation's turns after its prompt) together,
    before either is tokenized."""
    if traj.messages is not None:
        tools = 0 if traj.tools is None else len(_as_text(traj.tools))
        chars = sum(_chars(m) for m in traj.messages) + tools + len(traj.privileged or "")
        if chars > limits.context_chars:
            what = "the prompt and the privileged info have" if traj.privileged else "the prompt has"
            raise TooLong(
                f"{what} {chars} characters, over the limit of {limits.context_chars} ({CONTEXT_CHARS})"
            )
    if traj.conversation is not None and traj.messages is not None:
        chars = sum(_chars(m) for m in traj.conversation[len(traj.messages) :])
        if chars > limits.response_chars:
            raise TooLong(
                f"the conversation's turns after its prompt have {chars} characters, over the limit of "
                f"{limits.response_chars} ({RESPONSE_CHARS})"
            )
    if traj.response_text is not None and len(traj.response_text) > limits.response_chars:
        raise TooLong(
            f"the response has {len(traj.response_text)} characters, over the limit of "
            f"{limits.response_chars} ({RESPONSE_CHARS})"
        )


# Errors in words -----------------------------------------------------------------------------

_TAG = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|constrained-.*|function-.*|.*\[.*)$")
_KINDS = {
    "string_type": "a string",
    "list_type": "a list",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
}
_BOUNDS = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}


def field_path(loc: Sequence[str | int], key: bool = False) -> str:
    """`("messages", 0, "content")` as `messages[0].content`, without the names of union branches
    (`key`: the last part is a key of the input, whatever it looks like)."""
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _TAG.match(part) or (key and i == len(loc) - 1):
            path += f".{part}" if path else part
    return path or "body"


def _shown(value: Any) -> str:
    """A short input as JSON (a long one is never echoed back)."""
    if isinstance(value, bool | int | float | None) or (isinstance(value, str) and len(value) <= 40):
        return json.dumps(value)
    return f"a {type(value).__name__}"


def _setting(path: str) -> str | None:
    return SETTING_OF.get(re.sub(r"\[\d+\]", "[]", path))


def _level(path: str, model: type[BaseModel]) -> type[BaseModel]:
    """The model whose field `path` names: the request, its `generation`, a message, one of its
    tool calls or a call's function."""
    if "." not in path:
        return model
    if path.startswith("generation."):
        return GenerationOptions
    if ".function." in path:
        return ToolFunction
    return ToolCall if re.search(r"\.tool_calls\[\d+\]\.[^.]+$", path) else Message


def _message(path: str, error: Mapping[str, Any], model: type[BaseModel] | None) -> tuple[str, bool]:
    """One error in words, and whether it is a size over a setting's cap (413)."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    setting = _setting(path)
    if kind in ("string_too_long", "too_long") and setting:
        unit = "characters" if kind == "string_too_long" else "tokens"
        return f"{path} has {len(value)} {unit}, over the limit of {ctx['max_length']} ({setting})", True
    if kind == "extra_forbidden":
        near = suggest(path.rsplit(".", 1)[-1], _level(path, model)) if model is not None else None
        return f"{path}: not a field" + (f" (did you mean `{near}`?)" if near else ""), False
    if kind == "missing":
        return f"{path} is required", False
    bound = next((b for b in _BOUNDS if b in ctx), None)
    if bound and kind.startswith(("greater_than", "less_than")):
        limit = f" ({setting})" if setting and bound in ("le", "lt") else ""
        return f"{path} must be {_BOUNDS[bound]} {ctx[bound]}{limit}, got {_shown(value)}", False
    if kind in _KINDS:
        return f"{path} must be {_KINDS[kind]}, got {_shown(value)}", False
    if kind == "literal_error":  # e.g. a chat role
        return f"{path} must be {ctx['expected']}, got {_shown(value)}", False
    return f"{path}: {error['msg']}", False


def describe(
    errors: Sequence[Mapping[str, Any]], model: type[BaseModel] | None = None
) -> tuple[int, str, list[dict[str, str]]]:
    """(status, message, details) of a request's validation errors: 413 when a text or a list is
    over a setting's cap (that problem first), else 422; the message is the first problem (and
    how many more)."""
    by_path: dict[str, list[Mapping[str, Any]]] = {}
    for error in errors:
        by_path.setdefault(field_path(error["loc"], error["type"] == "extra_forbidden"), []).append(error)
    details: list[dict[str, str]] = []
    too_long: list[dict[str, str]] = []
    for path, group in by_path.items():
        real = [e for e in group if e["type"] not in _KINDS]
        nested = any(p.startswith((f"{path}[", f"{path}.")) for p in by_path if p != path)
        if not real and nested:
            continue  # the value took another branch of a union; its own errors say what is wrong
        if real:
            message, over = _message(path, real[0], model)
        elif len(group) > 1:  # a union: none of its types
            kinds = " or ".join(dict.fromkeys(_KINDS[e["type"]] for e in group))
            message, over = f"{path} must be {kinds}, got {_shown(group[0].get('input'))}", False
        else:
            message, over = _message(path, group[0], model)
        (too_long if over else details).append({"field": path, "error": message})
    details = too_long + details or [{"field": "body", "error": "body: invalid"}]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return (413 if too_long else 422), details[0]["error"] + more, details


# Files: unknown keys -------------------------------------------------------------------------


def _distance(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment)."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y)))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def suggest(key: str, model: type[BaseModel]) -> str | None:
    """The field `key` was probably meant to be: the same name in another case or with `-`, a
    field of `generation` given at the top, or one within a small edit distance (none for a
    field of two letters, one for up to five, two for longer)."""
    name = key.strip().lower().replace("-", "_").replace(" ", "_")
    candidates = list(model.model_fields)
    if name in candidates:
        return name
    if name in GenerationOptions.model_fields and "generation" in candidates:
        return f"generation.{name}"
    best = min(candidates, key=lambda field: _distance(name, field))
    allowed = 0 if len(best) <= 2 else 1 if len(best) <= 5 else 2
    return best if _distance(name, best) <= allowed else None


def open_keys(obj: Any, model: type[BaseModel]) -> tuple[Any, list[str]]:
    """A file line with its unknown keys moved into `meta`, and those keys (to warn about). A
    key that is a near miss of a field is the line's error: it was meant, not extra data."""
    if not isinstance(obj, dict):
        return obj, []
    unknown = [key for key in obj if key not in model.model_fields]
    for key in unknown:
        if near := suggest(key, model):
            raise BadTrajectory(f"`{key}`: did you mean `{near}`?", field=key)
    meta = obj.get("meta")
    if not unknown or not (meta is None or isinstance(meta, dict)):
        return obj, []  # a `meta` that is not an object is the line's error, found by the model
    line = {key: value for key, value in obj.items() if key not in unknown}
    line["meta"] = {**{key: obj[key] for key in unknown}, **(meta or {})}
    return line, unknown


LISTED_LINES = 20  # line numbers listed per unknown key (the count says how many in all)


def unknown_key_warnings(found: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    """One warning per unknown key of a file: which lines carry it (the first few) and how many."""
    return [
        {
            "key": key,
            "warning": f"`{key}` is not a field: kept in meta",
            "lines": lines[:LISTED_LINES],
            "count": len(lines),
        }
        for key, lines in found.items()
    ]
