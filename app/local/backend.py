"""The local backend: the models run here, with torch, on the configured device.

`pipeline.backend.Backend` over the engine (`engine.py`), the continuations (`continuations.py`)
and the pedagogical rollout (`pedagogical.py`). It owns the `ModelPair` and the engine's
settings (the metrics chunk size); the functions it wraps stay callable on their own (tests,
benchmarks, the naive reference). Knows nothing about HTTP or storage.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from vrollout.config import Settings
from vrollout.errors import ModelMismatch, ModelOutOfMemory
from vrollout.local import engine
from vrollout.local.continuations import continuations_from_every_prefix, free_memory
from vrollout.local.pedagogical import RolloutItem, pedagogical_rollout, pedagogical_rollouts
from vrollout.local.precision import NOISE_K, dtype_name, measure_noise, noise_record, reduced
from vrollout.local.sizing import Sizes, fitted_sizes
from vrollout.metrics.noise import Noise, combine
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.models import LoadedModel, ModelPair, check_window, load_pair
from vrollout.pipeline.backend import BatchItem
from vrollout.pipeline.replay import Progress, ReplayResult, _no_progress
from vrollout.rules import Policy

Work = TypeVar("Work", bound=Callable[..., Any])


def device_sizes(pair: ModelPair, settings: Settings) -> Sizes:
    """The settings' chunk and batch sizes, fitted to a CUDA device's free memory (`sizing`)."""
    defaults = Sizes(settings.chunk_size, settings.batch_tokens, settings.batch_max_sequence)
    model = pair.teacher if pair.cross_tokenizer else pair.student
    config = model.model.config
    return fitted_sizes(
        defaults,
        free_memory(model.input_device),
        pair.teacher_vocab_size or pair.vocab_size,
        getattr(config, "hidden_size", 4096),
        model.dtype.itemsize,
        frozenset(settings.model_fields_set),
    )


# CUDA allocation failures that torch raises as a plain RuntimeError (cuBLAS's workspace, a
# kernel's own allocation), not as torch.OutOfMemoryError.
ALLOCATION_FAILURES = ("CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA out of memory")


def allocation_failure(exc: BaseException) -> bool:
    return any(text in str(exc) for text in ALLOCATION_FAILURES)


def out_of_memory_freed(method: Work) -> Work:
    """Model work that runs out of memory (the accelerator's: `torch.OutOfMemoryError` or another
    CUDA allocation failure, `ALLOCATION_FAILURES`; or the host's) frees the accelerator's cache
    and raises the project's own `ModelOutOfMemory`, which the pipeline turns into a clear 503
    (`pipeline.analyzer.out_of_memory`): torch stays here."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (torch.OutOfMemoryError, MemoryError):
            pass  # leave the except block first: its traceback holds the request's tensors
        except RuntimeError as exc:
            if not allocation_failure(exc):
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ModelOutOfMemory("the model ran out of memory")

    return guarded  # type: ignore[return-value]


class LocalBackend:
    """Student and teacher in this process. Model work is not thread-safe: one job at a time."""

    name = "local"
    padded_batches = True  # one padded pass per model beats one pass per short line
    remote = False
    lines_in_flight = 1

    def __init__(self, pair: ModelPair, chunk_size: int) -> None:
        self.pair, self.chunk_size = pair, chunk_size
        # A model below float32: its numbers' error bound, measured now on the probe (`precision`)
        self.noise: Noise | None = None
        models = [pair.teacher] if pair.shared else [pair.teacher, pair.student]
        if not pair.cross_tokenizer and any(reduced(m) for m in models):
            self.noise = combine([measure_noise(m, pair.vocab_size) for m in models])
        self._vocabularies: Any = None  # cross-tokenizer pairs: local.cross.Vocabularies, made once
        self.sizes: Sizes | None = None  # `from_settings`: the batch and chunk sizes for the device

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        """Load the configured models and refuse an output head the engine cannot reproduce."""
        pair = load_pair(settings)
        for model in {id(pair.student): pair.student, id(pair.teacher): pair.teacher}.values():
            own = pair.teacher_vocab_size if pair.cross_tokenizer and model is pair.teacher else None
            engine.check_head(model, own or pair.vocab_size)
        backend = cls(pair, settings.chunk_size)
        backend.sizes = device_sizes(pair, settings)
        backend.chunk_size = backend.sizes.chunk_size
        return backend

    def fit_settings(self, settings: Settings) -> Settings:
        """`settings` with the batch sizes that fit the device (`sizing.fitted_sizes`: the same on
        a CPU), for the pipeline's batching of a file's lines."""
        if self.sizes is None:
            return settings
        return settings.model_copy(
            update={
                "batch_tokens": self.sizes.batch_tokens,
                "batch_max_sequence": self.sizes.batch_max_sequence,
            }
        )

    def check_top_k(self, top_k: int) -> None:
        pass  # every log-prob is at hand: the settings' VROLLOUT_MAX_TOP_K is the only limit

    def check_windows(self, student: int, teacher: int, what: str) -> None:
        """Refuse (`TooLong`, naming both numbers) work that runs past either model's window."""
        check_window(self.pair.student, student, f"the student's {what}")
        if self.pair.teacher is not self.pair.student or teacher > student:
            check_window(self.pair.teacher, teacher, f"the teacher's {what}")

    def _check_one(self, model: LoadedModel, tokens: int, what: str) -> None:
        role = "student" if model is self.pair.student else "teacher"
        check_window(model, tokens, f"the {role}'s {what}")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.computed_on()}

    def computed_on(self) -> dict[str, Any]:
        """What every analysis records of how it was computed: `device`, `dtype` (the teacher's
        where the two differ: "student/teacher"), and `noise` below float32."""
        pair = self.pair
        devices = dict.fromkeys(str(m.device) for m in (pair.student, pair.teacher))
        dtypes = dict.fromkeys(dtype_name(m.dtype) for m in (pair.student, pair.teacher))
        record: dict[str, Any] = {"device": "/".join(devices), "dtype": "/".join(dtypes)}
        if self.noise is not None:
            record["noise"] = self.noise.as_dict()
        return record

    def _record(self, result: ReplayResult, response: list[int], top_k: int) -> dict[str, Any]:
        """The analysis's keys from this backend: `computed_on`, and below float32 each step's
        `uncertain` and intervals (`precision.noise_record`, which trims the top-k lists)."""
        return {
            **self.computed_on(),
            **noise_record(self.noise, result, response, self.pair.vocab_size, top_k),
        }

    def status(self, since: float) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass  # the models are freed with the object

    @out_of_memory_freed
    def generate(
        self,
        context: list[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Progress = _no_progress,
    ) -> list[int]:
        self._check_one(self.pair.student, len(context) + max_new_tokens, "context + max_new_tokens")
        return engine.generate(self.pair.student, context, max_new_tokens, temperature, top_p, seed, progress)

    @out_of_memory_freed
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
        """`keep_student_pass`: the noise floor follows, so keep the student's hidden states
        (T, H) for `bare_replays` (only this backend takes it: see `bare_replays`)."""
        n = len(response)
        self.check_windows(len(student_context) + n, len(teacher_context) + n, "context + response")
        result = engine.replay(
            self.pair,
            student_context,
            teacher_context,
            response,
            top_k=max(top_k, NOISE_K) if self.noise else top_k,
            chunk_size=self.chunk_size,
            progress=progress,
            keep_teacher_cache=keep_for_continuations,
            keep_student_hidden=keep_student_pass,
            objectives=objectives,
        )
        return result, self._record(result, response, top_k)  # "backend": "local" by default

    @out_of_memory_freed
    def cross_replay(
        self,
        student_context: list[int],
        teacher_context: list[int],
        alignment: Any,
        top_k: int,
        progress: Progress = _no_progress,
    ) -> Any:
        """A teacher with another tokenizer: `local.cross.cross_replay` over an alignment."""
        from vrollout.local.cross import Vocabularies, cross_replay

        self.check_windows(
            len(student_context) + len(alignment.student_ids),
            len(teacher_context) + len(alignment.teacher_ids),
            "context + response",
        )
        if "mps" in {self.pair.student.device.type, self.pair.teacher.device.type}:
            raise ModelMismatch(
                "a teacher with another tokenizer is aligned with float64 sums, which Apple's MPS "
                "does not have: run these models on cpu or cuda (VROLLOUT_DEVICE)"
            )
        if self._vocabularies is None:
            self._vocabularies = Vocabularies.of(self.pair)
        return cross_replay(
            self.pair,
            self._vocabularies,
            student_context,
            teacher_context,
            alignment,
            top_k=top_k,
            chunk_size=self.chunk_size,
            progress=progress,
        )

    @out_of_memory_freed
    def replay_batch(
        self,
        items: list[BatchItem],
        top_k: int,
        keep_student_pass: bool = False,
        objectives: ObjectiveSpec | None = None,
    ) -> list[tuple[ReplayResult, dict[str, Any]]]:
        for s_ctx, t_ctx, response in items:  # a line past it fails the batch; each then runs alone
            self.check_windows(len(s_ctx) + len(response), len(t_ctx) + len(response), "context + response")
        results = engine.replay_batch(
            self.pair,
            items,
            top_k=max(top_k, NOISE_K) if self.noise else top_k,
            chunk_size=self.chunk_size,
            keep_student_hidden=keep_student_pass,
            objectives=objectives,
        )
        return [
            (result, self._record(result, item[2], top_k))
            for result, item in zip(results, items, strict=True)
        ]

    @out_of_memory_freed
    def bare_replays(
        self, mains: list[ReplayResult], items: list[tuple[list[int], list[int]]]
    ) -> list[ReplayResult]:
        """The noise floor's bare replays, (bare teacher context, response) each, against the
        student's pass that each analysis replay `mains` kept (`keep_student_pass`): only the
        teacher runs (one padded pass for several lines). The student's pass is deterministic
        here, so running it again would give the same hidden states at twice the cost; on vLLM
        the repeated request is the point (it measures the servers' repeat spread), so that
        backend has no such method."""
        hiddens = [main.student_hidden for main in mains]
        if len(items) == 1:
            return [
                engine.replay_teacher(self.pair, hiddens[0], *items[0], top_k=1, chunk_size=self.chunk_size)
            ]
        return engine.replay_teacher_batch(self.pair, hiddens, items, top_k=1, chunk_size=self.chunk_size)

    @out_of_memory_freed
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
        """Decoded from the replay's teacher pass where it was kept (`keep_for_continuations`),
        else from a teacher pass of their own (recovery runs after that cache is freed)."""
        self._check_one(
            self.pair.teacher, len(context) + len(response) + k, "context + response + continuation tokens"
        )
        forced = None
        if replayed is not None and replayed.teacher_cache is not None:
            forced = (replayed.teacher_cache, replayed.teacher_top1_id)
        return continuations_from_every_prefix(
            self.pair.teacher,
            context,
            response,
            k,
            progress,
            vocab_size=self.pair.vocab_size,
            positions=positions,
            stage=stage,
            forced=forced,
        )

    @out_of_memory_freed
    def pedagogical_rollout(
        self,
        student_context: list[int],
        teacher_context: list[int],
        policy: Policy,
        reference: str | None = None,
        progress: Progress = _no_progress,
    ) -> dict[str, Any]:
        n = policy.max_new_tokens
        self.check_windows(len(student_context) + n, len(teacher_context) + n, "context + max_new_tokens")
        return pedagogical_rollout(self.pair, student_context, teacher_context, policy, reference, progress)

    @out_of_memory_freed
    def pedagogical_rollouts(
        self,
        items: list[tuple[list[int], list[int], Policy, str | None]],
        progress: Progress = _no_progress,
    ) -> list[dict[str, Any]]:
        """Several rollouts, (student context, teacher context, policy, reference) each, decoded
        together (`pedagogical.pedagogical_rollouts`); each equals its own `pedagogical_rollout`."""
        for s_ctx, t_ctx, policy, _ in items:
            n = policy.max_new_tokens
            self.check_windows(len(s_ctx) + n, len(t_ctx) + n, "context + max_new_tokens")
        return pedagogical_rollouts(self.pair, [RolloutItem(*item) for item in items], progress)
