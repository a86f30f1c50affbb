"""The result of replaying one response through both models: per-step arrays, JSON-ready.

Shared by both backends and by analysis assembly; no tensors are needed to read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class ReplayResult:
    """Per-step arrays for T response tokens (python lists, JSON-ready)."""

    student_logprob: list[float] = field(default_factory=list)
    teacher_logprob: list[float] = field(default_factory=list)
    reverse_kl: list[float] = field(default_factory=list)
    forward_kl: list[float] = field(default_factory=list)
    student_entropy: list[float] = field(default_factory=list)
    teacher_entropy: list[float] = field(default_factory=list)
    teacher_top1_id: list[int] = field(default_factory=list)
    teacher_rank: list[int] = field(default_factory=list)
    teacher_topk_ids: list[list[int]] = field(default_factory=list)
    teacher_topk_logprobs: list[list[float]] = field(default_factory=list)
    student_topk_ids: list[list[int]] = field(default_factory=list)
    student_topk_logprobs: list[list[float]] = field(default_factory=list)
    # log q_t(v) at each of the student's top-k ids, in `student_topk_ids` order: teachability
    # (the teacher's mass on the student's top-k) is the sum of their exps, for any k' ≤ k.
    teacher_logprob_at_student_topk: list[list[float]] = field(default_factory=list)
    # The vocabulary-wide distillation objectives the local engine computed (metrics.objectives):
    # name -> one value per step; empty where none were asked for, or on vLLM.
    objectives: dict[str, list[Any]] = field(default_factory=dict)
    # Not a per-step field: the teacher's key/value cache over context + response, kept when
    # continuations follow (`replay(keep_teacher_cache=True)`), so they need no pass of their own.
    teacher_cache: Any = field(default=None, repr=False, compare=False)
    # Not a per-step field either: the student's final hidden states (T, H) that predict the
    # response, kept when the noise floor follows on the local engine (`keep_student_pass`), so
    # its bare replay runs only the teacher. Freed once the floor is computed.
    student_hidden: Any = field(default=None, repr=False, compare=False)

    def teacher_mass_on_student_topk(self) -> list[float]:
        """Each step's Σ_{v ∈ student top-k} q_t(v), from `teacher_logprob_at_student_topk`."""
        return [math.fsum(math.exp(v) for v in row) for row in self.teacher_logprob_at_student_topk]

    @classmethod
    def step_fields(cls) -> list[str]:
        skip = ("teacher_cache", "student_hidden", "objectives")
        return [name for name in cls.__dataclass_fields__ if name not in skip]

    def extend(self, chunk: Any) -> None:
        """Append a chunk of per-step tensors (anything whose fields have `.tolist()`)."""
        for name in self.step_fields():
            getattr(self, name).extend(getattr(chunk, name).tolist())
        for name, values in getattr(chunk, "objectives", {}).items():
            self.objectives.setdefault(name, []).extend(values.tolist())

    def split(self, lengths: list[int]) -> list[ReplayResult]:
        """Consecutive pieces of `lengths` steps each (the inverse of concatenating replays)."""
        pieces, start = [], 0
        for n in lengths:
            piece = ReplayResult()
            for name in self.step_fields():
                getattr(piece, name).extend(getattr(self, name)[start : start + n])
            piece.objectives = {name: values[start : start + n] for name, values in self.objectives.items()}
            pieces.append(piece)
            start += n
        return pieces
