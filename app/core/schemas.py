"""Request and response bodies of the JSON API: `/docs` is generated from these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    role: str = Field(examples=["user"])
    content: str


class GenerationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = Field(
        None, description="default 256 (128 for pedagogical rollouts); limit: VROLLOUT_MAX_NEW_TOKENS"
    )
    temperature: float = Field(0.0, description="0 = greedy")
    top_p: float = 1.0
    seed: int = 0


class AnalyzeRequest(BaseModel):
    """A trajectory (text, chat messages, TRL prompt-completion or token ids: docs/formats.md),
    plus options. Without a response the student generates one first (seeded)."""

    model_config = ConfigDict(
        extra="forbid",
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
        None, description="text, or chat messages (TRL prompt-completion)"
    )
    response: str | None = None
    messages: list[Message] | None = Field(None, description="the last assistant message is the response")
    completion: list[Message] | None = None
    prompt_ids: list[int] | None = Field(None, description="the student's whole context, as ids")
    response_ids: list[int] | None = None
    teacher_prompt_ids: list[int] | None = None
    privileged: str | None = Field(None, description="shown to the teacher only")
    id: str | None = None
    reference_answer: str | float | None = None
    meta: dict[str, Any] | None = None
    top_k: int | None = Field(
        None, description="alternatives kept per step: default 5 (limit: VROLLOUT_MAX_TOP_K)"
    )
    continuation_tokens: int = Field(0, description="teacher's greedy continuation length from every prefix")
    recovery: bool = Field(
        False,
        description="run the teacher to the end from a set of prefixes and check each against "
        "reference_answer (required then)",
    )
    recovery_max_new_tokens: int | None = Field(
        None, description="length bound of each recovery run (default 64; limit: VROLLOUT_MAX_NEW_TOKENS)"
    )
    generation: GenerationOptions | None = None


class PedagogicalRequest(BaseModel):
    """A prompt (any text format, or ids) or the id of a stored analysis whose contexts to reuse."""

    model_config = ConfigDict(
        extra="forbid",
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
    analysis_id: str | None = None
    prompt: str | list[Message] | None = None
    messages: list[Message] | None = None
    prompt_ids: list[int] | None = None
    teacher_prompt_ids: list[int] | None = None
    privileged: str | None = None
    reference_answer: str | float | None = None
    id: str | None = None
    meta: dict[str, Any] | None = None
    threshold: float = Field(
        0.05, description="the teacher steps in where its probability of the student's token is below this"
    )
    max_rank: int | None = Field(None, description="... or where the token's teacher rank is above this")
    sweep: list[float] | None = Field(None, description="thresholds for the interventions-vs-success curve")
    generation: GenerationOptions | None = None


class TopToken(BaseModel):
    token_id: int
    token: str
    logprob: float


class Continuation(BaseModel):
    token_ids: list[int]
    text: str


class Step(BaseModel):
    position: int
    token_id: int
    token: str
    student_logprob: float
    teacher_logprob: float
    advantage: float
    reverse_kl: float
    forward_kl: float
    student_entropy: float
    teacher_entropy: float
    teacher_top1_id: int
    teacher_top1: str
    agree: bool
    teacher_rank: int
    teacher_topk: list[TopToken]
    student_topk: list[TopToken]
    teacher_continuation: Continuation | None


class Side(BaseModel):
    model: str
    context_ids: list[int]
    context_text: str


class TeacherSide(Side):
    privileged: str | None
    shared_weights: bool


class Rollout(BaseModel):
    token_ids: list[int]
    text: str


class Summary(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokens: int
    agreement_rate: float | None
    divergences: int
    first_divergence: int | None = Field(description="0-based position in the response")
    reverse_kl_total: float
    reverse_kl_mean: float | None
    advantage_total: float


class Analysis(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    created_at: str
    student: Side
    teacher: TeacherSide
    response_ids: list[int]
    response_text: str
    retokenized: bool
    steps: list[Step]
    virtual_rollout: Rollout
    summary: Summary


class AnalysisListItem(BaseModel):
    id: str
    created_at: str
    student: str
    teacher: str
    tokens: int
    summary: dict[str, Any]
    preview: str


class AnalysisList(BaseModel):
    items: list[AnalysisListItem]
    total: int
    limit: int
    offset: int


class ErrorBody(BaseModel):
    ok: bool = False
    error: str
    status: int
