"""The TRL callback logs the chosen distillation objectives (#26, docs/objectives.md): each
one's mean total and Spearman per evaluation, so a run shows their drift across steps. Unit
level: the logging function on analyses' summaries, and one evaluation on a plain Trainer
(no training loop)."""

from __future__ import annotations

import pytest
from support.tiny import tiny_model, tiny_tokenizer
from transformers import Trainer, TrainingArguments
from vrollout.errors import VRError
from vrollout.integrations.trl import PREFIX, VirtualRolloutCallback, summarize_analyses

ROWS = [{"prompt": f"What is {i}+{i}?", "privileged": f"The answer is {2 * i}."} for i in range(2)]


def analysis(objectives):
    summary = {
        "agreement_rate": 0.5, "reverse_kl_mean": 0.1, "reverse_kl_total": 1.0, "first_divergence": 0,
        "divergences": 1, "tokens": 10, "objectives": objectives,
    }  # fmt: skip
    return {"summary": summary}


def test_each_objective_logs_its_mean_total_and_spearman():
    first = analysis(
        {"k1": {"total": 1.0, "spearman": 0.5, "bias": 0.0}, "jsd": {"total": 0.2, "spearman": None}}
    )
    second = analysis(
        {"k1": {"total": 3.0, "spearman": 0.7, "bias": 2.0}, "jsd": {"total": 0.4, "spearman": 0.9}}
    )
    logs = summarize_analyses([first, second])
    assert logs[PREFIX + "objectives/k1/total"] == pytest.approx(2.0)
    assert logs[PREFIX + "objectives/k1/spearman"] == pytest.approx(0.6)
    assert logs[PREFIX + "objectives/jsd/total"] == pytest.approx(0.3)
    assert logs[PREFIX + "objectives/jsd/spearman"] == pytest.approx(0.9)  # the defined one only
    assert not any("bias" in key for key in logs)  # total and Spearman, nothing else
    assert logs[PREFIX + "reverse_kl_total"] == 1.0  # the other metrics as before


def test_no_objectives_no_objective_scalars():
    old = analysis(None)  # an analysis without them (another tokenizer, or stored before #26)
    assert not any(k.startswith(PREFIX + "objectives/") for k in summarize_analyses([old]))
    nulls = analysis({"topk_reverse_kl": {"total": None, "spearman": None}})  # vLLM: not computed
    assert not any(k.startswith(PREFIX + "objectives/") for k in summarize_analyses([nulls]))


@pytest.fixture
def plain(tmp_path) -> Trainer:
    tok = tiny_tokenizer()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    return Trainer(model=tiny_model(len(tok)), args=args, processing_class=tok)


def test_the_callback_logs_the_chosen_objectives(plain):
    callback = VirtualRolloutCallback(plain, ROWS, num_prompts=2, max_new_tokens=6, objectives=["k1", "jsd"])
    metrics = callback.evaluate(3)
    assert [set(a["summary"]["objectives"]) for a in callback.last] == [{"k1", "jsd"}] * 2
    logged = {k for k in metrics if k.startswith(PREFIX + "objectives/")}
    assert logged <= {PREFIX + f"objectives/{n}/{f}" for n in ("k1", "jsd") for f in ("total", "spearman")}
    assert {PREFIX + "objectives/k1/total", PREFIX + "objectives/jsd/total"} <= logged
    assert metrics[PREFIX + "objectives/k1/total"] == pytest.approx(
        sum(a["summary"]["objectives"]["k1"]["total"] for a in callback.last) / 2
    )
    with pytest.raises(VRError, match="objectives"):
        VirtualRolloutCallback(plain, ROWS, num_prompts=1, objectives=["k9"])
