"""The virtual rollout from inside a training run: a `transformers.TrainerCallback` for TRL's
trainers (SFT, GRPO, the distillation trainers) and any `transformers.Trainer`.

Every `every_n_steps` optimizer steps the policy being trained answers a few fixed prompts
greedily; each answer is replayed through the teacher (an explicit `teacher=`, else the trainer's
`teacher_model`, else the policy itself with the privileged context: self-distillation). The mean
summary numbers are logged through the trainer's own logging, so they reach whatever `report_to`
names (trackio, W&B, TensorBoard), and the analyses are stored in a database that
`vrollout serve --database PATH` shows.

The live modules are wrapped as they are (no copy of the weights): the engine runs them in eval
mode without gradients, and every submodule's train/eval mode is restored after. No TRL code is
imported: a trainer's teacher is found by its attribute name, so any Trainer subclass works.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from vrollout.config import Settings
from vrollout.errors import ModelMismatch, VRError
from vrollout.local import engine
from vrollout.models import LoadedModel, ModelPair, pair_from_models, with_rendering
from vrollout.notebook import Analysis
from vrollout.pipeline.analyzer import Analyzer
from vrollout.storage.store import Store

log = logging.getLogger(__name__)

PREFIX = "vrollout/"


def _verdict(a: dict[str, Any]) -> float | None:
    verdict = a.get("verdict")  # present when the prompt came with a reference answer
    return None if not verdict else float(verdict["correct"])


# The logged scalars (each under PREFIX): how each is read from one analysis (None: undefined there).
METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "agreement_rate": lambda a: a["summary"]["agreement_rate"],
    "reverse_kl_mean": lambda a: a["summary"]["reverse_kl_mean"],
    "reverse_kl_total": lambda a: a["summary"]["reverse_kl_total"],
    "kl_top_5pct": lambda a: (a["summary"].get("concentration") or {}).get("top_5pct"),
    "reverse_kl_share_at_divergences": lambda a: a["summary"].get("reverse_kl_share_at_divergences"),
    "first_divergence": lambda a: a["summary"]["first_divergence"],
    "divergences": lambda a: a["summary"]["divergences"],
    "diverged": lambda a: float(a["summary"]["divergences"] > 0),
    "tokens": lambda a: a["summary"]["tokens"],
    "correct": _verdict,
}


# Each distillation objective's per-analysis summary fields logged (docs/objectives.md), under
# PREFIX + "objectives/NAME/FIELD": its total and its rank correlation with the exact reverse KL,
# so a run shows each objective drift against the exact signal across training steps.
OBJECTIVE_FIELDS = ("total", "spearman")


def _objective_metrics(analyses: list[dict[str, Any]]) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """A reader per objective field, for each objective some analysis carries (in first-seen order)."""
    names = dict.fromkeys(name for a in analyses for name in (a["summary"].get("objectives") or {}))
    return {
        f"objectives/{name}/{field}": lambda a, n=name, f=field: (
            (a["summary"].get("objectives") or {}).get(n) or {}
        ).get(f)
        for name in names
        for field in OBJECTIVE_FIELDS
    }


def summarize_analyses(analyses: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's mean over the analyses that define it, under PREFIX, then each objective's
    mean total and Spearman (`objectives/NAME/total`, `objectives/NAME/spearman`). A metric none
    of them defines is left out rather than logged as a made-up number: `first_divergence` when no
    answer diverged (`diverged` says how many did), `correct` without reference answers, a
    Spearman over a constant signal."""
    out: dict[str, float] = {}
    for name, read in {**METRICS, **_objective_metrics(analyses)}.items():
        values = [float(v) for a in analyses if (v := read(a)) is not None and math.isfinite(v)]
        if values:
            out[PREFIX + name] = sum(values) / len(values)
    return out


@contextmanager
def evaluating(*models: Any) -> Iterator[None]:
    """Every submodule in eval mode (dropout off) for the replay; each one's own mode restored
    after, so a part the trainer keeps in eval mode (a frozen tower) stays there."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def exact_forward(model: Any) -> Iterator[None]:
    """The model's own forward, for the head check: accelerate's mixed precision wraps a prepared
    model's forward in autocast in place (keeping the original as `_original_forward`), and the
    check compares that forward with the engine's pass, which autocast does not reach."""
    original = getattr(model, "_original_forward", None)
    if original is None:
        yield
        return
    patched = model.__dict__.get("forward")
    model.forward = original
    try:
        yield
    finally:
        if patched is None:
            del model.forward
        else:
            model.forward = patched


def _name(model: Any) -> str:
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(path).name or type(model).__name__


def _tokenizer(processing_class: Any) -> Any:
    """A processor (vision-language models) carries its tokenizer; a tokenizer is itself."""
    return getattr(processing_class, "tokenizer", None) or processing_class


class VirtualRolloutCallback(TrainerCallback):
    """Replays the current policy's answers to a few prompts through a teacher every
    `every_n_steps` steps; logs `vrollout/*` scalars and stores the analyses.

    `trainer.add_callback(VirtualRolloutCallback(trainer, prompts, database="runs.sqlite3"))`.

    `prompts`: rows (dicts, or an HF dataset) with the prompt (text or chat messages), and
    optionally the privileged text and a reference answer, under the `*_column` names; the
    first `num_prompts` rows are used at every evaluation, so the numbers compare across steps.
    `teacher`: a model sharing the policy's vocabulary, or "self"; by default the trainer's
    `teacher_model` (TRL's distillation trainers), else the policy with the privileged text.
    `settings`: the analysis limits and the teacher template (`vrollout.config.Settings`).
    `objectives`: the distillation objectives to compute and log (names as in
    docs/objectives.md; default all), each as `vrollout/objectives/NAME/total` and `.../spearman`."""

    def __init__(
        self,
        trainer: Trainer,
        prompts: Iterable[Mapping[str, Any]],
        *,
        every_n_steps: int = 100,
        num_prompts: int = 4,
        max_new_tokens: int = 128,
        top_k: int = 5,
        teacher: Any = None,
        teacher_tokenizer: Any = None,
        prompt_column: str = "prompt",
        privileged_column: str | None = "privileged",
        reference_column: str | None = "reference_answer",
        database: str | Path | None = None,
        at_start: bool = False,
        settings: Settings | None = None,
        objectives: Iterable[str] | None = None,
    ) -> None:
        if every_n_steps < 1 or num_prompts < 1 or max_new_tokens < 1:
            raise ValueError("every_n_steps, num_prompts and max_new_tokens must be at least 1")
        if isinstance(prompts, str | bytes | Mapping):
            raise TypeError("prompts is an iterable of rows (dicts, or a dataset), not a single row")
        self.trainer = trainer
        self.every_n_steps, self.at_start = every_n_steps, at_start
        self.settings = settings or Settings()
        self.store = Store(Path(database)) if database is not None else None
        self.tokenizer = _tokenizer(trainer.processing_class)
        if self.tokenizer is None:
            raise ValueError("the trainer has no tokenizer (processing_class): the callback needs one")
        self.teacher = self._find_teacher(teacher)
        self.teacher_tokenizer = _tokenizer(teacher_tokenizer or getattr(trainer, "teacher_tokenizer", None))
        rows = list(itertools.islice(prompts, num_prompts))
        if not rows:
            raise ValueError("prompts is empty: the callback needs at least one prompt")
        chosen = None if objectives is None else list(objectives)
        self.lines = [
            self._line(i, row, prompt_column, privileged_column, reference_column, max_new_tokens, top_k)
            | ({} if chosen is None else {"objectives": chosen})  # an unknown name fails below, now
            for i, row in enumerate(rows)
        ]
        self.last: list[Analysis] = []  # the latest evaluation's analyses
        pair = self._pair()
        self._prepare(Analyzer(pair, self.settings), step=0)  # bad prompts fail now, not mid-run
        with evaluating(*self._modules(pair)):
            for model in {id(pair.student): pair.student, id(pair.teacher): pair.teacher}.values():
                with exact_forward(model.model):
                    engine.check_head(model, pair.vocab_size)

    def _find_teacher(self, teacher: Any) -> Any:
        if isinstance(teacher, str):
            if teacher != "self":
                raise ValueError(f'teacher is a model or "self", got {teacher!r}')
            return None
        self.teacher_source = "the teacher given to the callback"
        if teacher is None:
            teacher = getattr(self.trainer, "teacher_model", None)
            self.teacher_source = "the trainer's teacher_model"
        if teacher is None:
            return None
        return self.trainer.accelerator.unwrap_model(teacher)

    def _line(
        self,
        index: int,
        row: Mapping[str, Any],
        prompt_column: str,
        privileged_column: str | None,
        reference_column: str | None,
        max_new_tokens: int,
        top_k: int,
    ) -> dict[str, Any]:
        """A prompt row as a trajectory line without a response (the policy writes it)."""
        if not isinstance(row, Mapping):
            raise TypeError(f"prompt {index} is a {type(row).__name__}, not a row (a dict of columns)")
        if row.get(prompt_column) is None:
            raise ValueError(f"prompt {index} has no {prompt_column!r} column; its columns: {sorted(row)}")
        line: dict[str, Any] = {
            "prompt": row[prompt_column],
            "id": str(row["id"]) if row.get("id") is not None else f"prompt-{index}",
            "top_k": top_k,
            "generation": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
        }
        if privileged_column and row.get(privileged_column) is not None:
            line["privileged"] = row[privileged_column]
        elif self.teacher is None:
            raise ValueError(
                f"prompt {index} has no {privileged_column!r} column: self-distillation replays the "
                "policy with privileged context, without it the teacher is the student itself. Name "
                "the column with privileged_column=, or give a teacher="
            )
        if reference_column and row.get(reference_column) is not None:
            line["reference_answer"] = row[reference_column]
        return line

    @staticmethod
    def _modules(pair: ModelPair) -> list[Any]:
        return [pair.student.model] + ([] if pair.shared else [pair.teacher.model])

    def _pair(self) -> ModelPair:
        """The trainer's live modules as a model pair (re-read each time: a trainer may swap them)."""
        policy = self.trainer.model
        student = LoadedModel(_name(policy), "the policy being trained", policy, self.tokenizer)
        if self.teacher is None:
            pair = pair_from_models(student, None, self.settings.teacher_template)
            return with_rendering(pair, self.settings)
        policy_vocab = policy.get_output_embeddings().out_features
        teacher_vocab = self.teacher.get_output_embeddings().out_features
        if self.teacher_tokenizer is None and teacher_vocab != policy_vocab:
            raise ModelMismatch(
                f"the teacher has {teacher_vocab} output logits and the policy {policy_vocab}: per-token "
                "KL needs one shared vocabulary. If they share one (padded heads), pass "
                "teacher_tokenizer= to show it"
            )
        tok = self.teacher_tokenizer or self.tokenizer
        teacher = LoadedModel(_name(self.teacher), self.teacher_source, self.teacher, tok)
        pair = pair_from_models(student, teacher, self.settings.teacher_template)
        return with_rendering(pair, self.settings)

    def _prepare(self, analyzer: Analyzer, step: int) -> list[Any]:
        """Each prompt validated and tokenized, tagged with the training step (the dataset
        page's drift views group by it); an error names the prompt."""
        prepared = []
        for index, line in enumerate(self.lines):
            try:
                prepared.append(analyzer.prepare({**line, "step": step}))
            except VRError as exc:
                raise type(exc)(f"prompt {index}: {exc.message}", **exc.details) from exc
        return prepared

    def evaluate(self, step: int) -> dict[str, float]:
        """Answer, replay, store and summarise now (what the callback does every N steps);
        returns the scalars it would log. A prompt that fails (e.g. an empty answer) is skipped
        with a warning: the training run goes on."""
        start = time.perf_counter()
        pair = self._pair()
        analyzer = Analyzer(pair, self.settings, self.store)
        analyses: list[dict[str, Any]] = []
        with evaluating(*self._modules(pair)):
            for index, prep in enumerate(self._prepare(analyzer, step)):
                try:
                    analyses.append(analyzer.run(prep))
                except VRError as exc:
                    log.warning("vrollout: prompt %d skipped at step %d: %s", index, step, exc.message)
        self.last = [Analysis(a) for a in analyses]
        metrics = summarize_analyses([a.to_dict() for a in self.last])
        metrics[PREFIX + "prompts"] = float(len(analyses))
        metrics[PREFIX + "skipped"] = float(len(self.lines) - len(analyses))
        metrics[PREFIX + "seconds"] = time.perf_counter() - start
        return metrics

    def _log(self, state: TrainerState, control: TrainerControl) -> None:
        if not state.is_world_process_zero:
            return  # one process answers and logs; the others go on to the next step's sync
        metrics = self.evaluate(state.global_step)
        # The base Trainer's log: TRL's trainers override `log` to flush their own running
        # metrics, which must stay in their own log lines. Logging clears `should_log`, which
        # would drop this step's own log line (the loss): it is put back as it was.
        should_log = control.should_log
        Trainer.log(self.trainer, metrics)
        control.should_log = self.trainer.control.should_log = should_log

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.at_start and state.global_step == 0:
            self._log(state, control)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step % self.every_n_steps == 0:
            self._log(state, control)
