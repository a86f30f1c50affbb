"""Pedagogical rollouts on the real default model (SmolLM2-135M-Instruct, self-teacher with
privileged info: student and teacher rows share one left-padded batch) against the naive loop
(a full forward pass of each model per step), alone and batched."""

from __future__ import annotations

import pytest
from vrollout.local.pedagogical import Policy, RolloutItem, pedagogical_rollout, pedagogical_rollouts
from vrollout.local.reference import naive_pedagogical
from vrollout.pipeline.analyzer import Analyzer

pytestmark = pytest.mark.real_model

LINES = [
    {"prompt": "What is 17*23?", "response": "-", "privileged": "17*23 = 17*20 + 17*3 = 340 + 51 = 391."},
    {"prompt": "Name the capital of France and one fact about it.", "response": "-", "privileged": "Paris"},
]
POLICIES = [
    Policy(threshold=0.05, max_new_tokens=20),
    Policy(threshold=0.3, temperature=1.0, top_p=0.9, seed=4, max_new_tokens=16),
    Policy(threshold=1e-4, max_rank=2, temperature=0.7, seed=9, max_new_tokens=16),
]


def contexts(analyzer: Analyzer, line: dict) -> tuple[list[int], list[int]]:
    ctx = analyzer.prepare(line).ctx
    return ctx.student_ids, ctx.teacher_ids


def same_as_naive(fast: dict, naive: list[dict]) -> None:
    assert fast["response_ids"] == [s["token"] for s in naive]
    for token, step in zip(fast["tokens"], naive, strict=True):
        assert token["source"] == ("teacher" if step["intervened"] else "student")
        assert token["student_logprob"] == pytest.approx(step["student_logprob"], abs=1e-3)
        assert token["teacher_logprob"] == pytest.approx(step["teacher_logprob"], abs=1e-3)


@pytest.mark.parametrize("policy", POLICIES, ids=["greedy", "sampled-top-p", "rank-limit"])
def test_real_rollout_equals_naive_loop(real_analyzer: Analyzer, policy: Policy):
    pair = real_analyzer.pair
    s_ctx, t_ctx = contexts(real_analyzer, LINES[0])
    assert pair.shared and s_ctx != t_ctx  # two rows of one batch, padded to the longer context
    fast = pedagogical_rollout(pair, s_ctx, t_ctx, policy, "391")
    same_as_naive(fast, naive_pedagogical(pair, s_ctx, t_ctx, policy))


def test_real_batched_rollouts_equal_one_by_one_and_naive(real_analyzer: Analyzer):
    pair = real_analyzer.pair
    items = [
        RolloutItem(*contexts(real_analyzer, line), policy)
        for line, policy in [(LINES[0], POLICIES[1]), (LINES[1], POLICIES[0]), (LINES[1], POLICIES[2])]
    ]
    items.append(RolloutItem(items[1].student_context, items[1].student_context, POLICIES[1]))  # one row
    batched = pedagogical_rollouts(pair, items)
    for item, got in zip(items, batched, strict=True):
        alone = pedagogical_rollout(pair, item.student_context, item.teacher_context, item.policy)
        assert got["response_ids"] == alone["response_ids"]
        for a, b in zip(got["tokens"], alone["tokens"], strict=True):
            assert a["student_logprob"] == pytest.approx(b["student_logprob"], abs=1e-3)
            assert a["teacher_logprob"] == pytest.approx(b["teacher_logprob"], abs=1e-3)
        same_as_naive(got, naive_pedagogical(pair, item.student_context, item.teacher_context, item.policy))
