"""Every analysis says how it was computed and how far to trust it (issue #29): `device` and
`dtype`, and for a model below float32 the `noise` object measured at start-up against a float32
copy, with per-step `uncertain` flags and KL intervals (metrics/intervals.py). Checked against a
float64 reference of the same weights: every top-1 difference falls on an uncertain step, every
exact KL lies in its interval."""

from __future__ import annotations

import copy

import pytest
import torch
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.schema.analysis import analysis_adapter

ANSWERS = [
    {"prompt": "What is 2+2?", "response": "the answer is 4, because 2 and 2 make 4. hello the world"},
    {"prompt": "Say hello", "response": "hello hello the world, then the end of it all"},
    {"prompt": "Count", "response": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"},
]


def exact_steps(model, context: list[int], response: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, V) float64 log-probs of `model`'s weights in float64, predicting each response token."""
    reference = copy.deepcopy(model.model).to(torch.float64)
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([context + response])).logits[0]
    return logits[len(context) - 1 : -1].log_softmax(-1)


def test_an_fp32_analysis_says_its_device_and_dtype_and_carries_no_noise(tmp_path):
    a = Analyzer(tiny_pair(), tiny_settings(tmp_path)).analyze(ANSWERS[0])
    assert a["device"] == "cpu" and a["dtype"] == "float32" and "noise" not in a
    assert "uncertain" not in a["steps"][0]
    analysis_adapter().validate_python(a, strict=True)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    pair = tiny_pair(torch.bfloat16, teacher_seed=3)
    return pair, Analyzer(pair, tiny_settings(tmp_path_factory.mktemp("bf16")))


def test_a_bf16_analysis_carries_the_measured_noise(bf16):
    pair, analyzer = bf16
    a = analyzer.analyze({**ANSWERS[0], "top_k": 2})
    assert a["device"] == "cpu" and a["dtype"] == "bfloat16"
    noise = a["noise"]
    assert noise["method"] == "fp32-copy" and noise["dtype"] == "bfloat16"
    assert noise["logprob_bound"] == pytest.approx(2 * noise["measured"]) and noise["logprob_bound"] > 0
    assert noise["probe_tokens"] > 50 and noise["logprob_floor"] < 0
    step = a["steps"][0]
    assert isinstance(step["uncertain"], bool) and len(step["reverse_kl_interval"]) == 2
    assert len(step["teacher_topk"]) == 2  # the wider top-k of the intervals trimmed back
    analysis_adapter().validate_python(a, strict=True)


def test_bf16_top1_differences_fall_on_uncertain_steps_and_exact_kls_in_their_intervals(bf16):
    pair, analyzer = bf16
    flips = steps = 0
    for answer in ANSWERS:
        a = analyzer.analyze(answer)
        s_ctx, t_ctx, response = a["student"]["context_ids"], a["teacher"]["context_ids"], a["response_ids"]
        logp = exact_steps(pair.student, s_ctx, response)[:, : pair.vocab_size]
        logq = exact_steps(pair.teacher, t_ctx, response)[:, : pair.vocab_size]
        p, q = logp.exp(), logq.exp()
        reverse = (p * (logp - logq)).sum(-1)
        forward = (q * (logq - logp)).sum(-1)
        for t, step in enumerate(a["steps"]):
            steps += 1
            if step["teacher_top1_id"] != int(logq[t].argmax()) or step["agree"] != bool(
                logq[t, response[t]] >= logq[t].max()
            ):
                flips += 1
                assert step["uncertain"], (t, step["token"])
            lo, hi = step["reverse_kl_interval"]
            assert lo <= float(reverse[t]) <= hi, (t, lo, float(reverse[t]), hi)
            lo, hi = step["forward_kl_interval"]
            assert lo <= float(forward[t]) <= hi, (t, lo, float(forward[t]), hi)
    assert steps > 60
