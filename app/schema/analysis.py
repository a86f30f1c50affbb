"""The analysis (the JSON of `POST /api/analyze`, docs/metrics.md), typed once.

The pipeline builds plain dicts annotated with these TypedDicts; `/docs` shows them as the
response schema of the analysis routes; the tests validate analyses against them
(`analysis_adapter`) and check that every field is in docs/metrics.md (`field_names`).

Every TypedDict here is closed (`extra="forbid"`): a key the code emits that is not declared
here fails validation, so the type cannot fall behind the code. A key that only some analyses
carry (a vLLM server's, a teacher with another tokenizer, recovery, analyses stored before a
field existed) is `NotRequired`; a key that is always there but may be null is `X | None`.
Key order follows the order the pipeline builds them in. No torch, no HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import NotRequired, Required, TypedDict, get_type_hints, is_typeddict

CLOSED = ConfigDict(extra="forbid")
Interval = list[float | None]  # [lo, hi]; hi null where the tail is unbounded


# ----- the distillation objectives (docs/objectives.md) --------------------------------------

# Each framework's per-token signal, by name (contracts). k1 and k3 need only the sampled token's
# two log-probs; the others the whole vocabulary (the local engine's replay; null on vLLM).
ObjectiveName = Literal[
    "k1",
    "k3",
    "jsd",
    "topk_reverse_kl",
    "topk_forward_kl",
    "student_topk_reverse_kl",
    "student_topk_forward_kl",
    "topk_tail_reverse_kl",
    "topk_tail_forward_kl",
    "clipped_reverse_kl",
    "clipped_jsd",
]
OBJECTIVE_NAMES: tuple[str, ...] = get_args(ObjectiveName)


@with_config(CLOSED)
class Objectives(TypedDict, total=False):
    """One step's value under each objective asked for (docs/objectives.md); null where the
    backend cannot compute it (vLLM: all but k1 and k3)."""

    k1: Annotated[float | None, Field(description="log p_s(y) − log p_t(y) at the sampled token")]
    k3: Annotated[float | None, Field(description="(r − 1) − log r, r = p_t(y) / p_s(y)")]
    jsd: Annotated[float | None, Field(description="TRL's generalised JSD at jsd_beta")]
    topk_reverse_kl: Annotated[
        float | None, Field(description="reverse KL over the teacher's top objective_k")
    ]
    topk_forward_kl: Annotated[float | None, Field(description="verl's forward KL over the teacher's top-k")]
    student_topk_reverse_kl: Annotated[float | None, Field(description="reverse KL over the student's top-k")]
    student_topk_forward_kl: Annotated[float | None, Field(description="forward KL over the student's top-k")]
    topk_tail_reverse_kl: Annotated[
        float | None, Field(description="TRL: reverse KL over the teacher's top-k plus a tail bucket")
    ]
    topk_tail_forward_kl: Annotated[
        float | None, Field(description="TRL: forward KL over the teacher's top-k plus a tail bucket")
    ]
    clipped_reverse_kl: Annotated[float | None, Field(description="min(reverse KL, clip_tau)")]
    clipped_jsd: Annotated[float | None, Field(description="slime's OPSD: min(jsd, clip_tau)")]
    clip_hit: Annotated[bool | None, Field(description="the exact reverse KL is above clip_tau")]


@with_config(CLOSED)
class ObjectiveSummary(TypedDict):
    """How one objective spreads its signal against the exact reverse KL (docs/objectives.md);
    every field null where the per-step values are (vLLM)."""

    total: float | None
    bias: Annotated[float | None, Field(description="total − the exact reverse KL's total")]
    spearman: Annotated[
        float | None, Field(description="rank correlation with the exact per-step reverse KL")
    ]
    top5pct_overlap: Annotated[
        float | None, Field(description="share of its |mass| on the exact signal's top 5% of tokens")
    ]
    gini: Annotated[float | None, Field(description="Gini coefficient of its |values|")]
    clipped_share: NotRequired[
        Annotated[float | None, Field(description="clipped objectives: share of the mass the clip removes")]
    ]


@with_config(CLOSED)
class QuadrantShare(TypedDict):
    tokens: Annotated[float | None, Field(description="share of the tokens in this quadrant")]
    signal: Annotated[float | None, Field(description="share of the exact reverse KL in this quadrant")]


@with_config(CLOSED)
class Quadrants(TypedDict):
    """TIP's two axes (arXiv 2604.14084): student entropy x teacher-student divergence (the
    exact reverse KL); high means strictly above the threshold."""

    entropy_threshold: float | None
    divergence_threshold: float | None
    split: Annotated[
        Literal["median", "given"], Field(description="median: the thresholds are this analysis's medians")
    ]
    high_entropy_high_divergence: QuadrantShare
    high_entropy_low_divergence: QuadrantShare
    low_entropy_high_divergence: Annotated[QuadrantShare, Field(description="TIP's overconfident tokens")]
    low_entropy_low_divergence: QuadrantShare


@with_config(CLOSED)
class ObjectiveOptions(TypedDict):
    """The options the objectives were computed with (request options of the same names)."""

    objectives: list[ObjectiveName]
    objective_k: int
    jsd_beta: float
    clip_tau: float
    tip_entropy_threshold: float | None
    tip_divergence_threshold: float | None


# ----- one step ------------------------------------------------------------------------------


@with_config(CLOSED)
class TopToken(TypedDict):
    token_id: int
    token: str
    logprob: float


@with_config(CLOSED)
class Continuation(TypedDict):
    """The teacher's greedy continuation from a prefix (docs/metrics.md, "Teacher continuations")."""

    token_ids: list[int]
    text: str


@with_config(CLOSED)
class Step(TypedDict):
    """One response token (docs/metrics.md, "Per-step fields"). A context step (`scored` false:
    a conversation's tool, user or header token) has its figures null and its top-k lists empty."""

    position: int
    token_id: int
    token: str
    # NotRequired: analyses stored before conversations (#25) have none of the three
    scored: NotRequired[
        Annotated[bool, Field(description="the student wrote this token (response_mask 1); false: context")]
    ]
    turn: NotRequired[
        Annotated[int | None, Field(description="index in messages of its message; null for token ids")]
    ]
    segment: NotRequired[
        Annotated[
            Literal["thinking", "answer"] | None,
            Field(description="in the reasoning or the answer; null where nothing marks reasoning"),
        ]
    ]
    # Null at a context step (scored false)
    student_logprob: float | None
    teacher_logprob: float | None
    advantage: float | None
    reverse_kl: float | None
    forward_kl: float | None
    student_entropy: float | None
    # Null too inside a span of a teacher with another tokenizer (no teacher prediction there)
    teacher_entropy: float | None
    teacher_top1_id: int | None
    teacher_top1: str
    agree: bool | None
    teacher_rank: int | None
    teacher_topk: list[TopToken]
    student_topk: list[TopToken]
    teacher_continuation: Continuation | None
    # NotRequired: analyses stored before these fields existed are served as they were stored.
    teacher_mass_on_student_topk: NotRequired[
        Annotated[
            float | None,
            Field(description="teachability: Σ over the student's top-k ids of the teacher's probability"),
        ]
    ]
    correction_in_student_topk: NotRequired[
        Annotated[
            bool | None,
            Field(description="at a divergence: the teacher's top-1 is among the student's top-k"),
        ]
    ]
    divergence_kind: NotRequired[
        Annotated[
            Literal["surface", "fork"] | None,
            Field(
                description="at a divergence with a continuation: whether it re-joins the student's tokens"
            ),
        ]
    ]
    fork_matters: NotRequired[
        Annotated[
            bool | None,
            Field(
                description="at a fork, with recovery: the teacher reaches the answer before it, not after"
            ),
        ]
    ]
    # Only on a server's analyses (docs/metrics.md, "Noise bounds"); absent on local ones.
    uncertain: NotRequired[
        Annotated[
            bool | None,
            Field(
                description="vLLM: the teacher's or student's top-2 are closer than twice noise.logprob_bound"
            ),
        ]
    ]
    reverse_kl_interval: NotRequired[
        Annotated[
            Interval | None,
            Field(description="vLLM: [lo, hi] holding the exact reverse KL (hi null: unbounded)"),
        ]
    ]
    forward_kl_interval: NotRequired[
        Annotated[Interval | None, Field(description="vLLM: likewise, forward KL")]
    ]
    student_entropy_interval: NotRequired[
        Annotated[list[float] | None, Field(description="vLLM: [lo, hi] holding the exact student entropy")]
    ]
    teacher_entropy_interval: NotRequired[
        Annotated[list[float] | None, Field(description="vLLM: likewise, teacher entropy")]
    ]
    # Only with a teacher of another tokenizer (docs/metrics.md, "Teachers with another tokenizer")
    span: NotRequired[Annotated[int, Field(description="cross-tokenizer: the step's span (alignment.spans)")]]
    span_start: NotRequired[
        Annotated[
            bool, Field(description="cross-tokenizer: the step starts its span (its prediction is compared)")
        ]
    ]
    # The distillation objectives asked for (docs/objectives.md); absent with another tokenizer
    objectives: NotRequired[Objectives | None]


# ----- the summary ---------------------------------------------------------------------------


@with_config(CLOSED)
class Concentration(TypedDict):
    """How a per-step signal is spread over the tokens (docs/metrics.md, "Signal concentration");
    every field is null when the total is 0."""

    top_1pct: Annotated[
        float | None, Field(description="share of the total carried by the largest 1% of tokens")
    ]
    top_5pct: float | None
    top_10pct: float | None
    top_20pct: float | None
    tokens_for_80pct: Annotated[
        float | None, Field(description="the smallest share of tokens carrying 80% of it")
    ]
    gini: float | None


@with_config(CLOSED)
class PartSummary(TypedDict):
    """The summary's figures over the scored steps of the whole response, or of one part of it
    (`summary.segments`: the thinking, the answer) (docs/metrics.md, "Summary fields")."""

    tokens: Annotated[int, Field(description="scored tokens (the student's)")]
    agreement_rate: float | None
    divergences: int
    first_divergence: Annotated[int | None, Field(description="0-based position in the response")]
    reverse_kl_total: float
    reverse_kl_mean: float | None
    # NotRequired: analyses stored before these fields existed are served as they were stored.
    reverse_kl_total_bits: NotRequired[float]
    reverse_kl_mean_bits: NotRequired[float | None]
    reverse_kl_max: NotRequired[float | None]
    reverse_kl_share_at_divergences: NotRequired[float | None]
    forward_kl_total: NotRequired[float]
    advantage_total: float
    advantage_mean: NotRequired[float | None]
    student_logprob_total: NotRequired[float]
    teacher_logprob_total: NotRequired[float]
    concentration: NotRequired[Annotated[Concentration, Field(description="of the per-step reverse KL")]]
    concentration_abs_advantage: NotRequired[Annotated[Concentration, Field(description="of |advantage|")]]
    teacher_mass_on_student_topk_mean: NotRequired[float | None]
    divergences_in_student_topk: NotRequired[
        Annotated[int | None, Field(description="divergences whose correction is among the student's top-k")]
    ]
    divergences_classified: NotRequired[
        Annotated[int | None, Field(description="null without continuations")]
    ]
    divergences_surface: NotRequired[int | None]
    divergences_fork: NotRequired[int | None]
    forks_that_matter: NotRequired[Annotated[int | None, Field(description="null without recovery")]]


@with_config(CLOSED)
class TurnSummary(TypedDict):
    """One assistant turn of a conversation: its scored tokens' figures (`summary.turns`)."""

    message_index: Annotated[int, Field(description="the turn's index in messages")]
    tokens: int
    reverse_kl: Annotated[float, Field(description="total over the turn's tokens")]
    divergences: int
    agreement_rate: float | None


@with_config(CLOSED)
class Segments(TypedDict):
    """The summary's figures over the thinking and over the answer (`summary.segments`)."""

    thinking: PartSummary | None
    answer: PartSummary | None


@with_config(CLOSED)
class Summary(PartSummary):
    """Numbers for the whole trajectory (docs/metrics.md, "Summary fields"): the scored steps'."""

    # NotRequired: analyses stored before conversations (#25) have neither
    turns: NotRequired[
        Annotated[list[TurnSummary] | None, Field(description="per assistant turn; null for token ids")]
    ]
    segments: NotRequired[Annotated[Segments | None, Field(description="null where nothing marks reasoning")]]
    # The distillation objectives against the exact reverse KL, and TIP's quadrants
    objectives: NotRequired[dict[ObjectiveName, ObjectiveSummary]]
    quadrants: NotRequired[Quadrants]
    # With recovery: copies of recovery's two headline numbers
    last_recoverable: NotRequired[int | None]
    reverse_kl_share_after_last_recoverable: NotRequired[float | None]
    # With a teacher of another tokenizer
    reverse_kl_estimate: NotRequired[Annotated[bool, Field(description="cross-tokenizer: a lower bound")]]
    spans: NotRequired[int]
    spans_differ: NotRequired[int]
    # The preflight's headline numbers (absent in analyses stored before it existed)
    preflight_ok: NotRequired[bool | None]
    noise_floor_reverse_kl_mean: NotRequired[float | None]
    leak_share: NotRequired[float | None]


# ----- the models, the line, the verdict -----------------------------------------------------


@with_config(CLOSED)
class Side(TypedDict):
    """A model and its context exactly as it saw it."""

    model: str
    context_ids: list[int]
    context_text: str


@with_config(CLOSED)
class SiblingRef(TypedDict):
    line: int | None
    id: str | None


@with_config(CLOSED)
class TeacherSide(Side):
    privileged: str | None
    context_kind: NotRequired[
        Annotated[
            Literal["privileged", "sibling", "feedback"], Field(description="which text `privileged` is")
        ]
    ]
    sibling: NotRequired[
        Annotated[SiblingRef | None, Field(description="the sibling whose response the teacher was given")]
    ]
    shared_weights: bool


@with_config(CLOSED)
class Rollout(TypedDict):
    token_ids: list[int]
    text: str


@with_config(CLOSED)
class Verdict(TypedDict):
    """Is the response right, and how that was decided (docs/metrics.md, "Verdicts")."""

    correct: bool
    method: Literal["given", "math-verify", "text"]
    parsed_answer: str | None
    parsed_reference: str | None
    # NotRequired: verdicts stored before these existed are served as they were stored.
    extractor: NotRequired[
        Annotated[
            str | None,
            Field(description="how math-verify found parsed_answer: final answer, boxed, after 'answer', "
                  "latex, last expression or last number; null when it found none"),
        ]
    ]  # fmt: skip
    restated: NotRequired[
        Annotated[
            bool,
            Field(description="parsed_answer only restates an expression of the question: not judged right"),
        ]
    ]
    text_form: NotRequired[
        Annotated[
            str | None, Field(description="the form of the reference the text rule found in the response")
        ]
    ]


@with_config(CLOSED)
class TrajectoryRecord(TypedDict):
    """What an analysis keeps of the line beyond its ids."""

    format: Annotated[str, Field(description="prompt_response, messages, prompt_completion or token_ids")]
    id: str | None
    reference_answer: str | None
    score: float | None
    correct: bool | None
    step: int | str | None
    meta: dict[str, Any] | None
    prompt: Annotated[list[dict[str, Any]] | None, Field(description="chat messages; null for token ids")]
    rendered: bool
    # NotRequired: only a conversation has it, and analyses stored before conversations (#25) have none.
    conversation: NotRequired[
        Annotated[
            list[dict[str, Any]],
            Field(
                description="a conversation's messages, each as given (tool calls, reasoning): "
                "`turn` indexes them"
            ),
        ]
    ]


@with_config(CLOSED)
class Generation(TypedDict):
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int


@with_config(CLOSED)
class JobRef(TypedDict):
    """Which job and line made the analysis (the CLI's: id null)."""

    id: str | None
    line: int
    shard: NotRequired[Annotated[str, Field(description="the CLI's --shard tag")]]


# ----- recovery, a server's fields, a teacher with another tokenizer -------------------------


@with_config(CLOSED)
class RecoveryPoint(TypedDict):
    position: int
    success: bool
    continuation: str


@with_config(CLOSED)
class Recovery(TypedDict):
    """docs/metrics.md, "Recovery"."""

    reference_answer: str
    max_new_tokens: int
    stride: int
    points: list[RecoveryPoint]
    student_success: bool
    last_recoverable: int | None
    reverse_kl_share_after_last_recoverable: float | None


@with_config(CLOSED)
class Noise(TypedDict):
    """How far to trust a server's numbers (docs/metrics.md, "Noise bounds")."""

    dtype: Annotated[str, Field(description="what the server computes in: bfloat16, float16 or float32")]
    logprob_bound: Annotated[
        float, Field(description="nats: every reported log-prob is within this of the exact one")
    ]
    method: Annotated[
        str,
        Field(
            description="vLLM: local (against the local engine on a probe) or repeat; local engine: "
            "fp32-copy (against a float32 copy on the probe) or per-dtype"
        ),
    ]
    measured: float
    probe_tokens: int
    logprob_floor: float | None


@with_config(CLOSED)
class RestMass(TypedDict):
    student: list[float]
    teacher: list[float]


@with_config(CLOSED)
class Estimator(TypedDict):
    method: str
    rest_mass: RestMass


@with_config(CLOSED)
class Span(TypedDict):
    """One span of a teacher with another tokenizer (docs/metrics.md)."""

    student: list[int]
    teacher: list[int]
    chars: list[int]
    text: str
    student_logprob: float
    teacher_logprob: float
    advantage: float
    differs: bool
    special: bool
    teacher_top1: str | None
    agree: bool
    reverse_kl: float | None
    forward_kl: float | None
    unmatched_student_mass: float | None
    unmatched_teacher_mass: float | None


@with_config(CLOSED)
class Alignment(TypedDict):
    teacher_response_ids: list[int]
    teacher_tokens: list[str]
    spans: list[Span]
    student_vocab_size: int
    teacher_vocab_size: int
    shared_vocabulary: int
    attribution: Literal["span_end"]
    estimated: list[str]


# ----- the preflight -------------------------------------------------------------------------


@with_config(CLOSED)
class ContextFlag(TypedDict):
    kind: Literal["system_prompt", "special_tokens", "whitespace", "other"]
    student_text: str
    teacher_text: str
    student_range: list[int]
    teacher_range: list[int]


@with_config(CLOSED)
class ContextDiff(TypedDict):
    """The two contexts diffed token by token (docs/metrics.md, "Preflight")."""

    ok: Annotated[
        bool | None, Field(description="nothing differs outside the privileged block (null: not diffed)")
    ]
    compared: NotRequired[str]
    student_tokens: NotRequired[int]
    teacher_tokens: NotRequired[int]
    privileged_range: Annotated[
        list[int] | None, Field(description="[start, end) of the privileged block in the teacher's ids")
    ]
    privileged_source: NotRequired[Literal["privileged_text", "largest_difference"] | None]
    flags: list[ContextFlag]
    flags_total: int
    skipped: str | None


@with_config(CLOSED)
class NoiseFloor(TypedDict, total=False):
    """The teacher without the privileged info vs the student; only `computed` and `skipped`
    when it was not computed."""

    computed: Required[bool]
    skipped: Required[str | None]
    same_context: bool
    reused_replay: bool
    reused_student_pass: bool
    estimated: bool
    tokens: int
    reverse_kl_mean: float | None
    reverse_kl_max: float | None
    reverse_kl_total: float
    max_abs_logprob_delta: float | None
    repeat_spread_max: float | None
    repeat_spread_mean: float | None
    signal_reverse_kl_mean: float | None


@with_config(CLOSED)
class Copied(TypedDict):
    ngrams: int
    copied: int
    share: float | None
    longest_copied_run: int


@with_config(CLOSED)
class Leak(TypedDict):
    """Word n-grams of the teacher's output copied from the privileged text."""

    n: int
    unit: Literal["words"]
    privileged_words: int
    virtual_rollout: Copied
    student_response: Copied
    continuations: Copied | None
    excess: float | None


@with_config(CLOSED)
class Preflight(TypedDict):
    """What to read before the numbers are trusted (docs/metrics.md, "Preflight")."""

    context_diff: ContextDiff
    noise_floor: NoiseFloor
    leak: Annotated[Leak | None, Field(description="null without privileged text")]


# ----- the analysis --------------------------------------------------------------------------


@with_config(CLOSED)
class Analysis(TypedDict):
    """One trajectory replayed through student and teacher (docs/metrics.md, "The analysis object")."""

    id: str
    created_at: str
    student: Side
    teacher: TeacherSide
    response_ids: list[int]
    response_mask: NotRequired[
        Annotated[list[int], Field(description="per response token: 1 the student wrote it, 0 context")]
    ]
    response_text: str
    retokenized: bool
    steps: list[Step]
    virtual_rollout: Rollout
    summary: Summary
    # NotRequired: analyses stored before these fields existed are served as they were stored.
    verdict: NotRequired[
        Annotated[Verdict | None, Field(description="null without correct or reference_answer")]
    ]
    trajectory: NotRequired[TrajectoryRecord]
    top_k: NotRequired[int]
    continuation_tokens: NotRequired[int]
    generation: NotRequired[
        Annotated[Generation | None, Field(description="when the student generated the response here")]
    ]
    backend: NotRequired[Literal["local", "vllm"]]
    notes: NotRequired[list[str]]
    device: NotRequired[
        Annotated[str, Field(description="where the models ran: cpu, cuda:0, mps; a vLLM server's: vllm")]
    ]
    dtype: NotRequired[
        Annotated[str, Field(description="what the models computed in: float32, bfloat16 or float16")]
    ]
    recovery: NotRequired[Annotated[Recovery, Field(description="only when recovery was asked for")]]
    job: NotRequired[Annotated[JobRef, Field(description="only for analyses made by a job or the CLI")]]
    top_k_logprobs: NotRequired[
        Annotated[int, Field(description="vLLM: K, the log-probs known per position")]
    ]
    estimated: NotRequired[
        Annotated[list[str], Field(description="vLLM: the fields that are top-K estimates")]
    ]
    estimator: NotRequired[Estimator]
    noise: NotRequired[
        Annotated[
            Noise | None,
            Field(description="vLLM, or a local model below float32: the dtype and log-prob error bound"),
        ]
    ]
    alignment: NotRequired[
        Annotated[Alignment, Field(description="only with a teacher of another tokenizer: the spans")]
    ]
    objective_options: NotRequired[
        Annotated[ObjectiveOptions, Field(description="what the steps' objectives were computed with")]
    ]
    preflight: NotRequired[Annotated[Preflight, Field(description="added once the analysis is built")]]


@cache
def analysis_adapter() -> TypeAdapter[Analysis]:
    """Validates an analysis (a dict, or its JSON with `validate_json`) against the type."""
    return TypeAdapter(Analysis)


def field_names(typed: type, where: str = "analysis") -> Iterator[tuple[str, str]]:
    """(where, name) of every field of `typed` and of the TypedDicts inside it, e.g.
    ("analysis.summary.concentration", "gini"): what docs/metrics.md must explain."""
    for name, hint in get_type_hints(typed).items():
        yield where, name
        for inner in _typeddicts(hint):
            yield from field_names(inner, f"{where}.{name}")


def _typeddicts(hint: Any) -> Iterator[type]:
    """The TypedDicts a field's type holds: itself, or inside `list[...]`, `X | None`."""
    if is_typeddict(hint):
        yield hint
    for arg in get_args(hint):
        yield from _typeddicts(arg)
