"""Issue #29, "How it is checked", on the real default model (slow tier): served in bfloat16 on
this CPU (the arithmetic a GPU's default dtype gives), three short real answers are scored against
a float64 pass of the same weights. The recorded bound holds, every top-1 difference from float64
falls on an `uncertain` step, every exact KL lies in its interval, `agree` and rank agree under
ties; and a response past the model's 8,192 positions is refused naming both numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from support import REAL_CACHE
from vrollout.config import Settings
from vrollout.errors import TooLong
from vrollout.pipeline.analyzer import Analyzer

pytestmark = pytest.mark.real_model

ANSWERS = [
    {
        "prompt": "What is 17*23?",
        "response": "17*23 = 17*20 + 17*3 = 340 + 51 = 391. The answer is 391.",
        "privileged": "17*23 = 391",
    },
    {
        "prompt": "Name the capital of France and one thing it is known for.",
        "response": "The capital of France is Paris, known for the Eiffel Tower.",
    },
    {
        "prompt": "Write one sentence about why the sky is blue.",
        "response": "Sunlight scatters off air molecules, and blue light scatters the most.",
        "privileged": "Rayleigh scattering: shorter wavelengths scatter more.",
    },
]


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    settings = Settings(
        database=tmp_path_factory.mktemp("bf16-real") / "db.sqlite3",
        cache_dir=REAL_CACHE,
        dtype="bfloat16",
        device="cpu",
        max_response_tokens=9000,  # the window, not this limit, must refuse the long response
        noise_floor=False,
    )
    return Analyzer.from_settings(settings)


@pytest.fixture(scope="module")
def float64_models(bf16):
    """The pair's weights in float64 (a self-teacher shares the student's)."""
    pair = bf16.pair
    student = copy.deepcopy(pair.student.model).to(torch.float64)
    teacher = student if pair.teacher.model is pair.student.model else copy.deepcopy(pair.teacher.model)
    return student, teacher.to(torch.float64)


@torch.inference_mode()
def exact_steps(model, context: list[int], response: list[int], vocab: int) -> torch.Tensor:
    """(T, V) float64 log-probs predicting each response token."""
    logits = model(input_ids=torch.tensor([context + response])).logits[0, :, :vocab]
    return logits[len(context) - 1 : -1].log_softmax(-1)


def test_bf16_real_answers_stay_inside_the_recorded_bound(bf16, float64_models):
    student64, teacher64 = float64_models
    vocab = bf16.pair.vocab_size
    steps = flips = 0
    worst = 0.0
    for answer in ANSWERS:
        a = bf16.analyze(answer)
        assert a["device"] == "cpu" and a["dtype"] == "bfloat16"
        noise = a["noise"]
        assert noise["dtype"] == "bfloat16" and noise["logprob_bound"] > 0
        response = a["response_ids"]
        logp = exact_steps(student64, a["student"]["context_ids"], response, vocab)
        logq = exact_steps(teacher64, a["teacher"]["context_ids"], response, vocab)
        p, q = logp.exp(), logq.exp()
        reverse = (p * (logp - logq)).sum(-1)
        forward = (q * (logq - logp)).sum(-1)
        for t, step in enumerate(a["steps"]):
            steps += 1
            token = response[t]
            # the recorded bound holds for the token's own log-probs
            for got, exact in (
                (step["student_logprob"], logp[t, token]),
                (step["teacher_logprob"], logq[t, token]),
            ):
                worst = max(worst, abs(got - float(exact)))
                assert abs(got - float(exact)) <= noise["logprob_bound"], (t, got, float(exact))
            top1_differs = step["teacher_top1_id"] != int(logq[t].argmax())
            agree_differs = step["agree"] != bool(logq[t, token] >= logq[t].max())
            if top1_differs or agree_differs:
                flips += 1
                assert step["uncertain"], (t, step["token"])
            lo, hi = step["reverse_kl_interval"]
            assert lo <= float(reverse[t]) <= hi, (t, lo, float(reverse[t]), hi)
            lo, hi = step["forward_kl_interval"]
            assert lo <= float(forward[t]) <= hi, (t, lo, float(forward[t]), hi)
            # ties: agree is rank 1, and the rank-1 token's log-prob is the top-1's
            assert step["agree"] == (step["teacher_rank"] == 1), t
            if step["agree"]:
                assert step["teacher_logprob"] == pytest.approx(step["teacher_topk"][0]["logprob"], abs=1e-6)
    assert steps > 40
    print(f"{steps} steps, {flips} top-1/agree differences from float64, worst |Δ log-prob| {worst:.4f}")


def test_a_response_past_the_8192_positions_is_refused_naming_both_numbers(bf16):
    with pytest.raises(TooLong) as caught:
        bf16.analyze({"prompt": "hi", "response": " hello" * 8300})
    message = caught.value.message
    tokens = caught.value.details["tokens"]
    assert tokens > 8192 and f"is {tokens} tokens" in message
    assert "8192-position window" in message and "max_position_embeddings" in message
