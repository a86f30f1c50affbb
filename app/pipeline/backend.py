"""The one interface between the analysis pipeline and wherever the models run.

`Analyzer` (pipeline/analyzer.py) holds a `Backend` and never asks which one it is. Two implementations:
`local.backend.LocalBackend` (torch, in this process) and `vllm.backend.VLLMBackend` (vLLM
servers). What they must agree on (end-of-sequence ids, the intervention rule, the teacher
template) is stated once in `rules`; the pedagogical loop in `pipeline.pedagogical`; which
recovery prefixes to try in `pipeline.recovery`. No torch, no HTTP here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vrollout.errors import ModelLoadError
from vrollout.pipeline.replay import Progress, ReplayResult, _no_progress

if TYPE_CHECKING:
    from vrollout.config import Settings
    from vrollout.metrics.objectives import ObjectiveSpec
    from vrollout.rules import Policy

# (student context, teacher context, response) ids of one line of a padded batch
BatchItem = tuple[list[int], list[int], list[int]]


class Model(Protocol):
    """What the pipeline reads of one model: its name and its tokenizer (a transformers one:
    `__call__`, `decode`, `apply_chat_template`, `eos_token_id`). `vrollout.models.LoadedModel`
    is one, and so is the vLLM backend's `RemoteModel`."""

    name: str
    tokenizer: Any
    model: Any  # the weights (or what stands for them remotely): their `generation_config`


class Models(Protocol):
    """What the pipeline needs of a student and a teacher, wherever they run
    (`vrollout.models.ModelPair` is one). The pipeline sits below the model loading: it never
    imports torch, so it names the pair by what it reads of it."""

    student: Model
    teacher: Model
    shared: bool  # one set of weights serves both
    vocab_size: int
    teacher_template: str
    student_chat_template_kwargs: dict[str, Any]
    teacher_chat_template_kwargs: dict[str, Any]
    teacher_prompt_format: str | None
    cross_tokenizer: bool
    teacher_vocab_size: int | None

    def describe(self) -> dict[str, Any]: ...


class ContinueFrom(Protocol):
    """The teacher's greedy continuations from prefixes of a response (recovery's source)."""

    def __call__(
        self,
        context: list[int],
        response: list[int],
        k: int,
        progress: Progress = _no_progress,
        *,
        positions: list[int] | None = None,
        stage: str = "continuations",
    ) -> list[list[int]]: ...


@runtime_checkable
class Backend(Protocol):
    """Where the student and the teacher run. Every method takes and returns token ids and
    plain numbers; `ReplayResult` holds the per-step arrays of docs/metrics.md."""

    name: str  # "local" or "vllm": what /api/models and each analysis say
    pair: Models  # the models (tokenizers, names, vocabulary, teacher template)

    @property
    def padded_batches(self) -> bool:
        """Whether short lines may share one padded pass (`replay_batch`) to go faster."""
        ...

    @property
    def remote(self) -> bool:
        """Whether the model work happens elsewhere (servers), so that lines may run on threads
        of their own instead of the one model worker."""
        ...

    @property
    def lines_in_flight(self) -> int:
        """Lines a job or the CLI runs at once."""
        ...

    def check_top_k(self, top_k: int) -> None:
        """Refuse (`BadTrajectory`) a top-k this backend cannot give."""
        ...

    def describe(self) -> dict[str, Any]:
        """What /api/models shows about the backend (at least {"backend": name})."""
        ...

    def status(self, since: float) -> dict[str, Any]:
        """What a job's state shows about the backend during a run started at `since` (wall
        clock): on vLLM each replica and its failures since then; locally nothing."""
        ...

    def close(self) -> None:
        """Release connections and threads (nothing to release locally)."""
        ...

    def generate(
        self,
        context: list[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Progress = _no_progress,
    ) -> list[int]:
        """The student's response to `context` (greedy at temperature 0, else seeded); an
        end-of-sequence token, when produced, stays in it."""
        ...

    def replay(
        self,
        student_context: list[int],
        teacher_context: list[int],
        response: list[int],
        top_k: int,
        progress: Progress = _no_progress,
        keep_for_continuations: bool = False,
        keep_student_pass: bool = False,
        objectives: ObjectiveSpec | None = None,
    ) -> tuple[ReplayResult, dict[str, Any]]:
        """Score `response` under both models: the per-step arrays, and fields the analysis
        gets from this backend (e.g. which metrics are estimates). `keep_for_continuations`:
        continuations follow, so keep what lets them skip work (`ReplayResult.teacher_cache`).
        `keep_student_pass`: a noise floor follows; a backend that can score the bare teacher
        against this student pass (an optional `bare_replays` method) keeps it
        (`ReplayResult.student_hidden`), any other ignores it. `objectives`: the vocabulary-wide
        distillation objectives to compute (`ReplayResult.objectives`), where the backend can."""
        ...

    def replay_batch(
        self,
        items: list[BatchItem],
        top_k: int,
        keep_student_pass: bool = False,
        objectives: ObjectiveSpec | None = None,
    ) -> list[tuple[ReplayResult, dict[str, Any]]]:
        """`replay` of several lines at once; each result equals its own `replay` within float
        tolerance."""
        ...

    def continuations(
        self,
        context: list[int],
        response: list[int],
        k: int,
        progress: Progress = _no_progress,
        *,
        positions: list[int] | None = None,
        stage: str = "continuations",
        replayed: ReplayResult | None = None,
    ) -> list[list[int]]:
        """The teacher's greedy k-token continuation of context + response[:t] for each t in
        `positions` (default every t), cut after the first end-of-sequence token. `replayed`:
        this response's replay, whose teacher top-1 (and cache, if kept) saves work. With
        `replayed` bound, this is recovery's continuation source (`ContinueFrom`)."""
        ...

    def pedagogical_rollout(
        self,
        student_context: list[int],
        teacher_context: list[int],
        policy: Policy,
        reference: str | None = None,
        progress: Progress = _no_progress,
    ) -> dict[str, Any]:
        """One pedagogical rollout under `policy` (`pipeline.pedagogical`), summarized."""
        ...


IMPLEMENTATIONS = {
    "local": "vrollout.local.backend:LocalBackend",
    "vllm": "vrollout.vllm.backend:VLLMBackend",
}


def implementation(name: str) -> Any:
    """The backend class `name` names. The backends sit above the pipeline (they import torch or
    HTTP clients): the pipeline names them here and imports one only when it is asked for, so the
    one not used (and its dependencies) is never imported."""
    module, attribute = IMPLEMENTATIONS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def local_backend(pair: Models, settings: Settings) -> Backend:
    """A pair already in memory (tests, notebooks, training loops) run in this process, with the
    settings' metrics chunk size."""
    return implementation("local")(pair, settings.chunk_size)


def load_backend(settings: Settings) -> Backend:
    """The backend `settings.backend` names, with its models loaded and checked."""
    try:
        return implementation(settings.backend).from_settings(settings)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:  # VRErrors say their own
        student = settings.student
        teacher = settings.teacher or "the student's weights"
        raise ModelLoadError(
            f"the models could not be loaded (backend {settings.backend}, student {student}, "
            f"teacher {teacher}): {type(exc).__name__}: {exc}"
        ) from exc
