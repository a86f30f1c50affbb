"""VirtualRolloutCallback in real TRL training loops on CPU (a tiny random Llama, a few steps):
what it logs through the trainer (state.log_history), what it stores (served by the app), and
its clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import trl
from datasets import Dataset
from fastapi.testclient import TestClient
from support import tiny_settings
from support.tiny import tiny_model, tiny_tokenizer
from transformers import Trainer, TrainerCallback, TrainingArguments
from vrollout.errors import ModelMismatch
from vrollout.integrations.trl import PREFIX, VirtualRolloutCallback, summarize_analyses
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app

ROWS = [
    {
        "prompt": [{"role": "user", "content": f"What is {i}+{i}?"}],
        "completion": [{"role": "assistant", "content": f"It is {2 * i}."}],
        "privileged": f"The answer is {2 * i}.",
        "reference_answer": str(2 * i),
    }
    for i in range(4)
]
FAST = {"num_prompts": 2, "max_new_tokens": 6}


def common(tmp_path, steps: int) -> dict:
    return {
        "output_dir": str(tmp_path / "out"),
        "max_steps": steps,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
    }


def logged(trainer) -> dict[int, dict[str, float]]:
    """The callback's entries of the trainer's log history, by step."""
    return {
        h["step"]: {k: v for k, v in h.items() if k.startswith(PREFIX)}
        for h in trainer.state.log_history
        if any(k.startswith(PREFIX) for k in h)
    }


def served(tmp_path, tiny) -> dict[int, list[dict]]:
    """The stored analyses as `vrollout serve --database` shows them, grouped by training step."""
    settings = tiny_settings(tmp_path)
    by_step: dict[int, list[dict]] = {}
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        listing = client.get("/api/analyses", params={"limit": 100}).json()
        for item in listing["items"]:
            analysis = client.get(f"/api/analyses/{item['id']}").json()
            by_step.setdefault(analysis["trajectory"]["step"], []).append(analysis)
    return by_step


class Reporter(TrainerCallback):
    """What a reporting integration sees: every on_log, with its step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append((state.global_step, dict(logs or {})))


def assert_summarizes(logs: dict[str, float], analyses: list[dict]) -> None:
    """The logged scalars are the means of the analyses' summaries, and nothing else."""
    expected = summarize_analyses(analyses)
    assert {PREFIX + n for n in ("agreement_rate", "reverse_kl_mean", "kl_top_5pct", "diverged")} <= set(
        expected
    )
    counts = {PREFIX + "prompts": float(len(analyses)), PREFIX + "skipped": 0.0}
    assert set(logs) == set(expected) | set(counts) | {PREFIX + "seconds"}
    for name, value in {**expected, **counts}.items():
        assert logs[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_sft_logs_every_n_steps_and_stores_what_serve_shows(tmp_path, tiny):
    tok = tiny_tokenizer()
    policy = tiny_model(len(tok))
    args = trl.SFTConfig(**common(tmp_path, 2))
    trainer = trl.SFTTrainer(
        model=policy, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok
    )
    before = policy.lm_head.weight.detach().clone()
    callback = VirtualRolloutCallback(
        trainer, ROWS, every_n_steps=2, at_start=True, database=tmp_path / "db.sqlite3", **FAST
    )
    trainer.add_callback(callback)
    reporter = Reporter()  # as trackio, W&B and TensorBoard receive logs: a callback's on_log
    trainer.add_callback(reporter)
    trainer.train()

    reported = {
        step: {k: v for k, v in logs.items() if k.startswith(PREFIX)}
        for step, logs in reporter.seen
        if any(k.startswith(PREFIX) for k in logs)
    }
    assert reported == logged(trainer)  # what the integrations got is what log_history holds
    assert not torch.equal(before, policy.lm_head.weight)  # it trained, on the weights the callback read
    logs = logged(trainer)
    assert sorted(logs) == [0, 2]  # at the start, then every 2 steps
    stored = served(tmp_path, tiny)
    assert sorted(stored) == [0, 2]
    for step, analyses in stored.items():
        assert len(analyses) == 2
        assert {a["trajectory"]["id"] for a in analyses} == {"prompt-0", "prompt-1"}
        for a in analyses:
            assert a["teacher"]["shared_weights"] is True  # self-distillation: the policy itself
            assert a["teacher"]["privileged"].startswith("The answer is")
            assert a["generation"]["max_new_tokens"] == 6 and a["summary"]["tokens"] <= 6
        assert_summarizes(logs[step], analyses)
        rates = [a["summary"]["agreement_rate"] for a in analyses]
        assert logs[step][PREFIX + "agreement_rate"] == pytest.approx(sum(rates) / 2)
    # Training's own log lines stay as they were, one per step (logging_steps=1), evaluated or not
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2]
    assert not any("loss" in h for h in trainer.state.log_history if any(k.startswith(PREFIX) for k in h))


def test_distillation_trainer_teacher_is_the_one_replayed(tmp_path, tiny):
    tok = tiny_tokenizer()
    teacher = tiny_model(len(tok), seed=3)
    args = trl.DistillationConfig(**common(tmp_path, 1), max_completion_length=6)
    trainer = trl.DistillationTrainer(
        model=tiny_model(len(tok)),
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
    )
    callback = VirtualRolloutCallback(
        trainer, ROWS, every_n_steps=1, database=tmp_path / "db.sqlite3", **FAST
    )
    assert callback.teacher is teacher  # the trainer's own module, not a copy
    trainer.add_callback(callback)
    trainer.train()
    assert sorted(logged(trainer)) == [1]
    (analyses,) = served(tmp_path, tiny).values()
    assert all(a["teacher"]["shared_weights"] is False for a in analyses)
    assert_summarizes(logged(trainer)[1], analyses)


def test_grpo_trainer(tmp_path):
    tok = tiny_tokenizer()
    prompts = [{k: r[k] for k in ("prompt", "privileged")} for r in ROWS]
    # Two steps: GRPO (with gradient checkpointing, its default) trains on after an evaluation
    args = trl.GRPOConfig(**common(tmp_path, 2), num_generations=2, max_completion_length=6)
    trainer = trl.GRPOTrainer(
        model=tiny_model(len(tok)),
        reward_funcs=lambda completions, **_: [float(len(c[0]["content"])) for c in completions],
        args=args,
        train_dataset=Dataset.from_list(prompts),
        processing_class=tok,
    )
    callback = VirtualRolloutCallback(trainer, prompts, every_n_steps=1, **FAST)
    trainer.add_callback(callback)
    trainer.train()
    logs = logged(trainer)
    assert sorted(logs) == [1, 2]
    assert_summarizes(logs[2], [a.to_dict() for a in callback.last])
    assert [a["trajectory"]["step"] for a in callback.last] == [2, 2]
    # GRPO's own metrics still reach their own log lines, one per step, not the callback's
    assert "reward" not in logs[1] and [h["step"] for h in trainer.state.log_history if "reward" in h] == [
        1,
        2,
    ]


@pytest.fixture
def plain(tmp_path) -> Trainer:
    tok = tiny_tokenizer()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    return Trainer(model=tiny_model(len(tok)), args=args, processing_class=tok)


def test_evaluate_restores_each_module_mode_and_stores_nothing_without_a_database(plain):
    model = plain.model
    model.train()
    model.model.embed_tokens.eval()  # a part the trainer keeps in eval mode stays there
    callback = VirtualRolloutCallback(plain, Dataset.from_list(ROWS), **FAST)  # a dataset's rows
    metrics = callback.evaluate(7)
    assert model.training and model.model.layers[0].training and not model.model.embed_tokens.training
    assert metrics[PREFIX + "prompts"] == 2 and callback.store is None
    assert [a["trajectory"]["step"] for a in callback.last] == [7, 7]
    assert callback.last[0]["student"]["model"] == callback.last[1]["student"]["model"]
    # Reference answers give the share of right answers (0 or 1 per prompt)
    assert metrics[PREFIX + "correct"] in (0.0, 0.5, 1.0)


def test_clear_errors(plain):
    no_privileged = [{"prompt": "hi"}]
    with pytest.raises(ValueError, match="'privileged' column.*teacher="):
        VirtualRolloutCallback(plain, no_privileged)
    with pytest.raises(ValueError, match="no 'question' column"):
        VirtualRolloutCallback(plain, ROWS, prompt_column="question")
    with pytest.raises(ValueError, match="prompts is empty"):
        VirtualRolloutCallback(plain, [])
    with pytest.raises(TypeError, match="not a single row"):
        VirtualRolloutCallback(plain, ROWS[0])
    with pytest.raises(ValueError, match='"self"'):
        VirtualRolloutCallback(plain, ROWS, teacher="gpt")
    with pytest.raises(ValueError, match="at least 1"):
        VirtualRolloutCallback(plain, ROWS, every_n_steps=0)
    # A teacher with another vocabulary: refused before training starts
    tok = tiny_tokenizer()
    bigger = tiny_model(len(tok) + 8, seed=1)
    with pytest.raises(ModelMismatch, match="shared vocabulary"):
        VirtualRolloutCallback(plain, ROWS, teacher=bigger)
    other = tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ModelMismatch, match="different vocabularies"):
        VirtualRolloutCallback(plain, ROWS, teacher=bigger, teacher_tokenizer=other)
    # A prompt the analysis refuses names its index
    with pytest.raises(Exception, match="prompt 0"):
        VirtualRolloutCallback(plain, ROWS, max_new_tokens=10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a teacher given explicitly needs no privileged text
        VirtualRolloutCallback(plain, no_privileged, teacher=tiny_model(len(tok), seed=2), **FAST)
