"""Response bodies of the JSON API, as `/docs` shows them (the analysis itself is typed once, in
`schema.analysis`). They describe the dicts the core and storage build; they add nothing.

Every model lets unlisted keys through (`extra="allow"`) and the routes serialise with
`response_model_exclude_unset`, so a response is exactly the dict that was built: a key that is
absent stays absent (an optional field here is one that only some responses carry, e.g. on the
vLLM backend), and nothing is dropped. No torch, no HTTP.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from vrollout.schema.analysis import Noise


class Open(BaseModel):
    """A documented object that may carry more keys than it lists."""

    model_config = ConfigDict(extra="allow")


class Health(Open):
    ok: bool
    version: str
    models_loaded: bool = Field(description="false only while the server starts")


class ModelInfo(Open):
    name: str
    source: str | None = Field(None, description="where the weights came from (a path, a hub id, a URL)")
    vocab_size: int
    device: str
    dtype: str


class Replica(Open):
    """One vLLM server, as the job page shows it."""

    role: str = Field(description="student or teacher")
    url: str | None = Field(description="the server's address; null without an API token")
    healthy: bool
    in_flight: int
    requests: int
    errors: int
    last_error: str | None


class ReplicaFailure(Open):
    at: float = Field(description="Unix time")
    role: str
    url: str
    error: str
    retried: bool = Field(description="false: it was the last attempt")


class Models(Open):
    student: ModelInfo
    teacher: ModelInfo
    shared_weights: bool = Field(description="the teacher is the student's own weights (self-distillation)")
    teacher_template: str = Field(description="how privileged info joins the teacher's prompt")
    backend: str = Field(description="local or vllm")
    top_k_logprobs: int | None = Field(None, description="vLLM: K, the log-probs known per position")
    replicas: list[Replica] | None = Field(None, description="vLLM: each server's state")
    dtype: str | None = Field(None, description="vLLM: what the servers compute in (read from their numbers)")
    noise: Noise | None = Field(None, description="vLLM: the servers' log-prob error bound (docs/metrics.md)")


class TaskStarted(Open):
    task_id: str
    url: str = Field(description="poll it: GET /api/tasks/{task_id}")


class TaskError(Open):
    error: str
    status: int = Field(description="the HTTP status the same failure gets from the synchronous route")


class PolicyInfo(Open):
    threshold: float
    max_rank: int | None
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


class PedagogicalToken(Open):
    position: int
    token_id: int
    token: str
    source: str = Field(description="student or teacher: who chose this token")
    student_logprob: float
    teacher_logprob: float


class Intervention(Open):
    position: int
    proposal_id: int = Field(description="the student's token, refused")
    proposal: str
    proposal_teacher_prob: float
    proposal_teacher_rank: int
    substitute_id: int = Field(description="the teacher's top-1, taken instead")
    substitute: str
    student_surprisal: float = Field(description="-log p_student(substitute), nats")


class SweepPoint(Open):
    threshold: float
    num_interventions: int
    tokens: int
    reached_reference: bool | None
    response_text: str


class RolloutSide(Open):
    model: str
    context_ids: list[int]
    context_text: str


class PedagogicalResult(Open):
    """A pedagogical rollout: the student proposes each token, the teacher substitutes its top-1
    only where the proposal is unacceptable under `policy`."""

    id: str
    created_at: str
    analysis_id: str | None = Field(description="the stored analysis whose contexts were reused")
    student: RolloutSide
    teacher: RolloutSide
    policy: PolicyInfo
    response_ids: list[int]
    response_text: str
    tokens: list[PedagogicalToken]
    interventions: list[Intervention]
    num_interventions: int
    reference_answer: str | None
    reached_reference: bool | None = Field(description="null without a reference answer")
    sweep: list[SweepPoint] | None = Field(description="one rollout per threshold, when asked for")


class TaskState(Open):
    id: str
    state: str = Field(description="queued, running, done, error or cancelled")
    stage: str = Field(description="what runs now: generate, replay, continuations, recovery, sweep, done")
    done: int
    total: int
    analysis_id: str | None = Field(description="when done: the stored analysis (GET /api/analyses/{id})")
    result: PedagogicalResult | None = Field(description="when done: a pedagogical rollout (not stored)")
    error: TaskError | None
    created: float = Field(description="Unix time")
    cancel_requested: bool = Field(False, description="POST /api/tasks/{id}/cancel was called")


class Rejected(Open):
    line: int = Field(description="1-based line of the uploaded file")
    error: str


class UnknownKey(Open):
    """A key of an uploaded file that is not a field: kept in the `meta` of each line with it."""

    key: str
    warning: str
    lines: list[int] = Field(description="the first lines that carry it")
    count: int = Field(description="how many lines carry it")


class Job(Open):
    id: str
    created_at: str
    name: str = Field(description="the uploaded file's name, for display")
    state: str = Field(description="queued, running, done or cancelled")
    mode: str = Field(
        "analysis", description="analysis, or pedagogical (a rollout record per line: docs/formats.md)"
    )
    options: dict[str, Any] = Field(description="the options given with the upload")
    total: int = Field(description="lines accepted")
    rejected: list[Rejected] = Field(description="lines refused at upload")
    warnings: list[UnknownKey] = Field(default_factory=list, description="keys that are not fields")
    started_at: str | None
    finished_at: str | None
    done: int
    failed: int
    pending: int
    tokens_done: int
    tokens_per_second: float | None = Field(None, description="while running")
    eta_seconds: float | None = Field(None, description="while running: time left")
    error: str | None = Field(None, description="why the job stopped by itself (e.g. the disk is full)")
    replicas: list[Replica] | None = Field(None, description="vLLM: each server's state")
    replica_errors: list[ReplicaFailure] | None = Field(None, description="vLLM: failures during this run")


class JobCreated(Open):
    job: Job
    accepted: int
    rejected: list[Rejected]
    warnings: list[UnknownKey] = Field(default_factory=list, description="keys that are not fields")


class JobItem(Open):
    line: int
    state: str = Field(description="pending, done or error")
    analysis_id: str | None
    error: str | None


class ObjectiveRow(BaseModel):
    """One analysis x one distillation objective of a job (docs/objectives.md; objectives.csv has
    the same columns)."""

    analysis_id: str
    line: int | None
    trajectory_id: str | None
    objective: str
    total: float | None
    bias: float | None
    spearman: float | None
    top5pct_overlap: float | None
    gini: float | None
    clipped_share: float | None


class SummaryRow(Open):
    """One analysed line of a job (the CSV and JSONL exports have the same columns)."""

    analysis_id: str
    line: int | None
    trajectory_id: str | None
    tokens: int
    agreement_rate: float | None
    divergences: int
    first_divergence: int | None
    reverse_kl_total: float
    reverse_kl_mean: float | None
    forward_kl_total: float
    advantage_total: float
    kl_top_1pct: float | None = Field(None, description="summary.concentration.top_1pct (reverse KL)")
    kl_top_5pct: float | None = Field(None, description="share of reverse KL on the top 5% of tokens")
    kl_top_10pct: float | None = None
    kl_top_20pct: float | None = None
    kl_tokens_for_80pct: float | None = Field(None, description="share of tokens carrying 80% of reverse KL")
    kl_gini: float | None = Field(None, description="Gini coefficient of the per-step reverse KL")
    abs_advantage_top_1pct: float | None = Field(None, description="the same over |advantage|")
    abs_advantage_top_5pct: float | None = None
    abs_advantage_top_10pct: float | None = None
    abs_advantage_top_20pct: float | None = None
    abs_advantage_tokens_for_80pct: float | None = None
    abs_advantage_gini: float | None = None
    teacher_mass_on_student_topk_mean: float | None = Field(None, description="null where not computed")
    divergences_in_student_topk: int | None = Field(None, description="teacher top-1 in student top-k")
    divergences_classified: int | None = Field(None, description="null without continuations")
    divergences_surface: int | None = Field(None, description="null without continuations")
    divergences_fork: int | None = Field(None, description="null without continuations")
    forks_that_matter: int | None = Field(None, description="null without recovery")
    correct: bool | None = Field(
        description="the verdict: null without a reference answer or given `correct`"
    )
    verdict_method: str | None = Field(None, description="how: given, math-verify or text (docs/metrics.md)")
    score: float | None = Field(None, description="the line's `score`, as given")
    step: int | str | None = Field(None, description="the line's training `step` or checkpoint")
    teacher_context: str | None = Field(
        None, description="what the teacher was given: privileged, sibling or feedback (docs/formats.md)"
    )
    preview: str = Field(description="the response's first 120 characters, whitespace collapsed")


class HeadlineCell(Open):
    n: int = Field(description="trajectories of the column with a value for the measure")
    median: float | None
    q1: float | None = Field(description="25th percentile (linear, as numpy's default)")
    q3: float | None = Field(description="75th percentile")
    text: str = Field(description='as the tables show it: "median [q1–q3]" (and "(n=…)")')


class HeadlineRow(Open):
    measure: str = Field(description="a summary column, or a ratio of two (docs/metrics.md)")
    label: str
    unit: str = Field(description="share (shown as a percentage), number, or count (per trajectory)")
    cells: dict[str, HeadlineCell] = Field(description="by column: all, correct, incorrect")


class HeadlineGroup(Open):
    name: str = Field(description="all, correct or incorrect")
    trajectories: int


class Headline(Open):
    """The dataset's headline table: measures × (all, correct, incorrect)."""

    groups: list[HeadlineGroup]
    rows: list[HeadlineRow]
    note: str


class OverLines(Open):
    mean: float | None = Field(description="over the lines that have it")
    max: float | None
    lines: int


class JobPreflight(Open):
    """A job's preflight (docs/metrics.md, "Preflight"), from its lines' analyses."""

    lines: int = Field(description="analysed lines")
    lines_checked: int = Field(description="lines whose analysis has a preflight")
    lines_flagged: int = Field(description="lines whose contexts differ outside the privileged block")
    flag_kinds: dict[str, int] = Field(description="lines with a flag of each kind")
    noise_floor_kl_mean: OverLines = Field(description="the noise floor, nats/token")
    signal_kl_mean: OverLines = Field(description="the analyses' reverse KL, nats/token")
    leak_share: OverLines = Field(description="the virtual rollout's share of copied 4-grams")


class TrajectoryRow(SummaryRow):
    """A row of the job page's trajectories table: the summary row and what the table derives."""

    divergences_per_100_tokens: float | None = Field(description="100 × divergences / tokens")
    kl_strip: list[float | None] | None = Field(
        description="mean reverse KL per token (nats) in each tenth of the response, read on a fixed "
        "scale (kl_strip_max_nats of the overview); null without any reverse KL"
    )


class JobModels(Open):
    student: str
    teacher: str
    trajectories: int = Field(description="the job's analyses made by this pair (0: none done yet)")


class JobSetting(Open):
    name: str
    value: str
    default: bool = Field(description="the upload left it unset: the value is the default")


class JobOverview(Open):
    """The job page's first screen (report/overview.py): its answer, models and settings."""

    answer: str | None = Field(description="the dataset's answer in a sentence; null before any line is done")
    models: list[JobModels]
    settings: list[JobSetting]
    kl_strip_max_nats: float = Field(description="the top of the mini strips' fixed scale (nats per token)")


class DriftRow(Open):
    """One training step of a job's lines (docs/metrics.md, "Drift across steps")."""

    step: int | str = Field(description="the lines' `step`: a training step or checkpoint name")
    trajectories: int
    tokens: int = Field(description="response tokens of the step's trajectories, together")
    tokens_mean: float
    agreement_rate: float | None = Field(description="1 − divergences / tokens, over the step's tokens")
    reverse_kl_mean: float | None = Field(description="Σ reverse KL / tokens (nats per token)")
    reverse_kl_share_at_divergences: float | None = Field(description="of the step's reverse KL")
    diverged_share: float = Field(description="share of trajectories with a divergence")
    first_divergence_mean: float | None
    first_divergence_median: float | None
    verdicts: int = Field(description="trajectories with a verdict")
    correct_share: float | None
    score_mean: float | None = Field(description="mean of the lines' `score`")


class Figure(Open):
    """A Plotly figure: `plotly.io.from_json(json.dumps(figure))` opens it."""

    data: list[dict[str, Any]]
    layout: dict[str, Any]


class StepsRange(Open):
    """Steps [start, stop) of a stored analysis (`GET /api/analyses/{id}/steps`): each as in the
    analysis's `steps`."""

    start: int
    stop: int = Field(description="exclusive; cut at total")
    total: int = Field(description="the analysis's number of steps")
    steps: list[dict[str, Any]]


class Deleted(Open):
    ok: bool
    id: str
    analyses_deleted: int | None = Field(None, description="a job's: its analyses, deleted with it")


class ComparisonRow(Open):
    """One line of a pedagogical job: comparison.csv's row (docs/metrics.md, "Pedagogical comparison")."""

    id: str
    student_correct: bool | None = Field(description="the student's own rollout reached the reference")
    opd_divergences: int = Field(description="divergences of the replay of the student's own rollout")
    opd_reverse_kl_total: float
    pedagogical_correct: bool | None = Field(description="the pedagogical rollout reached the reference")
    interventions: int = Field(description="tokens the teacher substituted in the pedagogical rollout")
    line: int | None
    analysis_id: str | None = Field(description="the stored analysis of the student's own rollout")
    student_generated: bool | None = Field(
        description="the student's rollout was generated (no response given)"
    )
    student_tokens: int
    opd_forks_that_matter: int | None
    pedagogical_tokens: int
    first_intervention: int | None = Field(description="position of the first substituted token")
    max_intervention_surprisal: float | None = Field(
        description="−(smallest student log-prob of a substituted token)"
    )
    sweep_min_interventions_to_success: int | None = Field(
        description="fewest interventions with which a threshold of the sweep reached the reference"
    )


class SuccessRate(Open):
    correct: int
    judged: int = Field(description="lines with a verdict (a reference)")
    rate: float | None = Field(description="correct / judged; null when none was judged")


class Spread(Open):
    n: int
    mean: float | None
    median: float | None
    p10: float | None = Field(description="10th percentile (linear, as numpy's default)")
    p90: float | None
    min: float | None
    max: float | None


class Rescue(Open):
    budget: int = Field(description="at most this many interventions")
    rescued: int = Field(description="student failures whose pedagogical rollout succeeded within the budget")
    share: float | None = Field(description="rescued / student failures; null without failures")


class RescueTable(Open):
    student_failures: int
    by_budget: list[Rescue]


class SweepSummary(Open):
    threshold: float
    lines: int
    judged: int
    success_rate: float | None
    mean_interventions: float


class ComparisonSummary(Open):
    """The headlines of a pedagogical job (docs/metrics.md, "Pedagogical comparison")."""

    lines: int
    student: SuccessRate = Field(description="the student alone")
    pedagogical: SuccessRate = Field(description="the pedagogical rollout")
    interventions_per_success: Spread = Field(description="over the successful pedagogical rollouts")
    interventions_all: Spread
    opd_divergences: Spread = Field(description="on the student's own rollout, every line")
    opd_divergences_same_lines: Spread = Field(description="... on the lines the pedagogical rollout solved")
    rescue: RescueTable
    sweep: list[SweepSummary] = Field(description="per threshold, across the lines with a sweep")
    intervention_student_logprob: Spread = Field(
        description="per intervention: student log-prob of the substitute"
    )
    max_surprisal_per_rollout: Spread = Field(description="per rollout with interventions")
    prompts_as_text: int = Field(
        0,
        description="lines whose prompt (given rendered or as token ids) could not be given as chat "
        "messages: their exported rows have prompt null and the exact text in prompt_text",
    )


class HeadlineText(Open):
    key: str
    label: str
    text: str


class Comparison(Open):
    """A pedagogical job's comparison: the headlines, as numbers and as the page's text, the
    figures and one row per line."""

    summary: ComparisonSummary
    headlines: list[HeadlineText]
    figures: dict[str, Figure]
    rows: list[ComparisonRow]


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


def media(description: str, types: dict[str, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a 200 that is (or may also be) text or a file of other media types: media
    type -> what it holds."""
    content = {kind: {"schema": {"type": "string", "description": what}} for kind, what in types.items()}
    return {200: {"description": description, "content": content}}
