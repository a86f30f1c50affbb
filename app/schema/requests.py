"""Request bodies of the JSON API: `/docs` is generated from these (the analysis is typed in
`schema.analysis`, the other response bodies in `schema.responses`).

The request models here hold every rule that does not depend on the settings; the bounds that
do (VROLLOUT_MAX_TOP_K, the character caps, ...) are added per app by `inputs.validation`, which
also checks uploaded lines, the CLI's input and the Python API with the same models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError
from vrollout.schema.analysis import ObjectiveName

# The roles chat templates render (OpenAI's, and the Hugging Face templates of Llama 3, Qwen,
# SmolLM, gpt-oss): `tool` is the result of a call (Llama 3.1's templates also take it as
# `ipython`, the header they render it under), `developer` is gpt-oss's system-like role.
Role = Literal["system", "user", "assistant", "tool", "ipython", "developer"]
ROLES: tuple[str, ...] = get_args(Role)

# Strict: a boolean is not a number, a string is not a number, a number is not a string.
# Closed: a key that is not a field is an error (files keep unknown keys in `meta` instead).
REQUEST = ConfigDict(strict=True, extra="forbid")
CONTEXT_CAP = "at most VROLLOUT_MAX_CONTEXT_TOKENS x VROLLOUT_CHARS_PER_TOKEN characters"
RESPONSE_CAP = "at most VROLLOUT_MAX_RESPONSE_TOKENS x VROLLOUT_CHARS_PER_TOKEN characters"
TokenId = Annotated[int, Field(ge=0)]
# Levels of objects and arrays in `meta`, itself the first. It is kept as given in the analysis,
# stored and served as JSON, and the JSON encoder stops at 254 levels: deeper is refused here.
MAX_META_DEPTH = 64


def storable_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """`meta` unchanged, or an error when it could not be served back as JSON: nested deeper than
    MAX_META_DEPTH, or a string (key or value) that is not Unicode (a lone surrogate, which JSON's
    `\\ud800` escape can carry). Walked without recursion, stopping at the first problem."""
    stack: list[tuple[Any, int]] = [(meta, 1)] if meta is not None else []
    while stack:
        value, depth = stack.pop()
        for inner in (*value.keys(), *value.values()) if isinstance(value, dict) else value:
            if isinstance(inner, str):
                _unicode(inner)
            elif isinstance(inner, dict | list | tuple):
                if depth == MAX_META_DEPTH:
                    raise PydanticCustomError(
                        "meta_too_deep",
                        "nested deeper than the limit of {limit} levels of objects and arrays",
                        {"limit": MAX_META_DEPTH},
                    )
                stack.append((inner, depth + 1))
    return meta


def _unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("meta_not_unicode", "a string in it is not valid Unicode") from None


Meta = Annotated[
    dict[str, Any] | None,
    AfterValidator(storable_meta),
    Field(description=f"kept as given (at most {MAX_META_DEPTH} levels of objects and arrays)"),
]


JsonObject = Annotated[dict[str, Any], AfterValidator(storable_meta)]
# Hostile input: how many calls one message and tool schemas one conversation may carry. Their
# text counts against the context and response caps (`inputs.validation.check_lengths`).
MAX_TOOL_CALLS = 128
MAX_TOOLS = 256
NAME_CHARS = 1_000  # a function's name, a call's id, a tool message's name


class ToolFunction(BaseModel):
    model_config = REQUEST
    name: str = Field(min_length=1, max_length=NAME_CHARS, examples=["get_weather"])
    arguments: str | JsonObject = Field(description="a JSON string (OpenAI) or an object (TRL)")


class ToolCall(BaseModel):
    """One call of an assistant message, in OpenAI's shape."""

    model_config = REQUEST
    id: str | None = Field(
        None, max_length=NAME_CHARS, description="what a tool message's tool_call_id names"
    )
    type: Literal["function"] = "function"
    function: ToolFunction


class Message(BaseModel):
    """A chat message as frameworks write it (OpenAI's shape): an assistant message may hold
    `tool_calls` instead of `content`; a `tool` message answers a call (`tool_call_id`)."""

    model_config = REQUEST
    role: Role = Field(examples=["user"])
    content: str | None = Field(
        None,
        description=f"{CONTEXT_CAP} (a response: {RESPONSE_CAP}); may be null in an assistant message "
        "with tool_calls",
    )
    tool_calls: list[ToolCall] | None = Field(None, min_length=1, max_length=MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(
        None, max_length=NAME_CHARS, description="a tool message: the call answered"
    )
    name: str | None = Field(None, max_length=NAME_CHARS, description="a tool message: the tool's name")
    reasoning_content: str | None = Field(
        None, description="the assistant's reasoning, rendered where the chat template puts it"
    )


class GenerationOptions(BaseModel):
    model_config = REQUEST
    max_new_tokens: int | None = Field(
        None, ge=1, description="default 256 (128 for pedagogical rollouts); limit: VROLLOUT_MAX_NEW_TOKENS"
    )
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=2**63 - 1)


class SiblingResponse(BaseModel):
    """A successful response to the same prompt, given to the teacher (teacher_context sibling)."""

    model_config = REQUEST
    response: str = Field(min_length=1, description=RESPONSE_CAP)
    line: int | None = Field(None, ge=0, description="its line in the file (analyze_many: its index)")
    id: str | None = Field(None, max_length=10_000, description="its id")


class AnalyzeRequest(BaseModel):
    """A trajectory in any format of docs/formats.md, plus options. Without a response the
    student generates one first (seeded)."""

    model_config = ConfigDict(
        **REQUEST,
        json_schema_extra={
            "examples": [
                {
                    "prompt": "What is 17*23?",
                    "response": "17*23 = 381.",
                    "privileged": "17*23 = 17*20 + 17*3 = 340 + 51 = 391.",
                }
            ]
        },
    )
    prompt: str | list[Message] | None = Field(
        None, description=f"text, or chat messages (TRL prompt-completion); text: {CONTEXT_CAP}"
    )
    response: str | None = Field(None, description=RESPONSE_CAP)
    messages: list[Message] | None = Field(
        None,
        min_length=1,
        description="a conversation: the messages before the first assistant message are the prompt, "
        "every assistant message after it is scored",
    )
    completion: str | Annotated[list[Message], Field(min_length=1)] | None = Field(
        None,
        description="after prompt as messages: the assistant's messages (tool calls, tool results, "
        "answers); after prompt as text: the response text (TRL's standard format)",
    )
    tools: list[JsonObject] | None = Field(
        None,
        max_length=MAX_TOOLS,
        description="the tools offered to the model (OpenAI's function schemas), for the chat template",
    )
    response_mask: list[Annotated[int, Field(ge=0, le=1)]] | None = Field(
        None,
        description="with response_ids: 1 where the policy wrote the token, 0 for tool or environment "
        "tokens (verl's multi-turn rollouts); only 1s are scored",
    )
    prompt_ids: list[TokenId] | None = Field(
        None, description="the student's whole context, as ids (limit: VROLLOUT_MAX_CONTEXT_TOKENS)"
    )
    response_ids: list[TokenId] | None = Field(None, description="limit: VROLLOUT_MAX_RESPONSE_TOKENS")
    teacher_prompt_ids: list[TokenId] | None = Field(None, description="limit: VROLLOUT_MAX_CONTEXT_TOKENS")
    privileged: str | None = Field(None, description=f"shown to the teacher only; {CONTEXT_CAP}")
    rendered: bool = Field(
        False,
        description="prompt is the exact text the model saw (chat template and generation prompt "
        "applied): tokenized as it is, never templated again",
    )
    id: str | None = Field(None, description=CONTEXT_CAP)
    reference_answer: str | int | float | None = Field(None, description=f"text: {RESPONSE_CAP}")
    # Which text the teacher is given (inputs.teacher_context; docs/formats.md, "Teacher context").
    teacher_context: Literal["privileged", "sibling", "feedback"] | None = Field(
        None,
        description="privileged (default: the privileged field), sibling (a successful response to "
        "the same prompt from the same file) or feedback (the feedback field)",
    )
    feedback: str | None = Field(
        None, description=f"for teacher_context feedback: an error message, a grader's comment; {CONTEXT_CAP}"
    )
    teacher_template: str | None = Field(
        None,
        description="this line's teacher template: {prompt} and {privileged} (or {feedback}); default: "
        "the settings' (privileged) or the kind's own",
    )
    sibling: SiblingResponse | None = Field(
        None, description="teacher_context sibling: the sibling chosen (a file's lines get it by the rule)"
    )
    # From a training log (docs/metrics.md, "Verdicts" and "Drift across steps"): kept as given.
    score: float | None = Field(None, allow_inf_nan=False, description="the log's reward or score")
    correct: bool | None = Field(None, description="the log's verdict: used as is, never re-checked")
    step: int | Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="training step or checkpoint name (the dataset's drift views group by it)"
    )
    meta: Meta = None
    top_k: int | None = Field(
        None, ge=0, description="alternatives kept per step: default 5 (limit: VROLLOUT_MAX_TOP_K)"
    )
    continuation_tokens: int = Field(
        0,
        ge=0,
        description="teacher's greedy continuation length from every prefix "
        "(limit: VROLLOUT_MAX_CONTINUATION_TOKENS)",
    )
    recovery: bool = Field(
        False,
        description="run the teacher to the end from a set of prefixes and check each against "
        "reference_answer (required then)",
    )
    recovery_max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="length bound of each recovery run (default 64; limit: VROLLOUT_MAX_NEW_TOKENS)",
    )
    generation: GenerationOptions | None = None
    noise_floor: bool | None = Field(
        None,
        description="preflight: also score the response by the teacher without the privileged info "
        "(one more replay; default: VROLLOUT_NOISE_FLOOR)",
    )
    # The distillation objectives of training frameworks (docs/objectives.md)
    objectives: list[ObjectiveName] | None = Field(
        None, description="per-step distillation objectives to compute (default: all of them)"
    )
    objective_k: int | None = Field(
        None, ge=1, le=4096, description="top-k of the top-k objectives (default 20, vLLM's cap)"
    )
    jsd_beta: float | None = Field(
        None, ge=0.0, le=1.0, description="β of TRL's generalised JSD (default 0.5; 0 forward, 1 reverse KL)"
    )
    clip_tau: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="per-token clip of the clipped objectives (default 0.05)",
    )
    tip_entropy_threshold: float | None = Field(
        None,
        ge=0.0,
        allow_inf_nan=False,
        description="TIP quadrants: student entropy threshold (default: median)",
    )
    tip_divergence_threshold: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="TIP quadrants: reverse KL threshold (default: median)"
    )


MAX_SWEEP = 12  # points of a threshold sweep: each is a whole pedagogical rollout


class PedagogicalRequest(BaseModel):
    """A prompt (any text format, or ids) or the id of a stored analysis whose contexts to reuse."""

    model_config = ConfigDict(
        **REQUEST,
        json_schema_extra={
            "examples": [
                {
                    "prompt": "What is 17*23?",
                    "privileged": "17*23 = 391",
                    "reference_answer": "391",
                    "threshold": 0.05,
                    "sweep": [0.01, 0.05, 0.2, 0.5],
                }
            ]
        },
    )
    analysis_id: str | None = Field(None, max_length=100)
    prompt: str | list[Message] | None = Field(
        None, description=f"text, or chat messages; text: {CONTEXT_CAP}"
    )
    messages: list[Message] | None = Field(None, min_length=1)
    prompt_ids: list[TokenId] | None = Field(None, description="limit: VROLLOUT_MAX_CONTEXT_TOKENS")
    teacher_prompt_ids: list[TokenId] | None = Field(None, description="limit: VROLLOUT_MAX_CONTEXT_TOKENS")
    privileged: str | None = Field(None, description=CONTEXT_CAP)
    rendered: bool = Field(
        False, description="prompt is the exact text the model saw (chat template applied), as for analyze"
    )
    reference_answer: str | int | float | None = Field(None, description=f"text: {RESPONSE_CAP}")
    id: str | None = Field(None, description=CONTEXT_CAP)
    meta: Meta = None
    threshold: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="the teacher steps in where its probability of the student's token is below this",
    )
    max_rank: int | None = Field(
        None, ge=1, description="... or where the token's teacher rank is above this (at most the vocabulary)"
    )
    sweep: list[Annotated[float, Field(gt=0.0, lt=1.0)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SWEEP,
        description="thresholds for the interventions-vs-success curve",
    )
    generation: GenerationOptions | None = None
