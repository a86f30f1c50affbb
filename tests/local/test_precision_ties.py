"""`agree` under ties (issue #29): agree means the teacher's rank 1, so a student token that ties
the teacher's maximum agrees, on the local engine and on the vLLM top-K path alike."""

from __future__ import annotations

import math

import torch
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.local.metrics import step_stats
from vrollout.pipeline.analyzer import Analyzer
from vrollout.vllm.topk import parse_positions, replay_from_positions


def test_a_tie_with_the_maximum_is_rank_1_on_hand_built_logits():
    teacher = torch.tensor([[0.0, 3.0, 1.0, 3.0, -2.0] * 16])  # ids 1 and 3 (and more) tie at the top
    student = torch.zeros_like(teacher)
    stats = step_stats(student, teacher, torch.tensor([3]), top_k=2)
    assert int(stats.teacher_top1_id[0]) == 1  # the first tied id, as torch.argmax
    assert int(stats.teacher_rank[0]) == 1  # nothing strictly above the student's token


def test_a_student_token_tied_with_the_teachers_top1_agrees(tmp_path):
    pair = tiny_pair()
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    request = {"prompt": "hi", "response": "hello the world", "top_k": 2}
    first = analyzer.analyze(request)
    # A step where the teacher's top-1 has a smaller id than the student's token: give the
    # student's token the top-1's head row, so their logits are equal there (a tie, as bf16
    # often makes), and argmax picks the top-1's smaller id.
    t, step = next((t, s) for t, s in enumerate(first["steps"]) if s["teacher_top1_id"] < s["token_id"])
    head = pair.student.model.get_output_embeddings().weight
    with torch.no_grad():
        head[step["token_id"]] = head[step["teacher_top1_id"]]
    tied = analyzer.analyze(request)["steps"][t]
    assert tied["teacher_top1_id"] == step["teacher_top1_id"] != tied["token_id"]
    assert tied["teacher_rank"] == 1 and tied["agree"] is True
    assert math.isclose(tied["teacher_logprob"], tied["teacher_topk"][0]["logprob"], abs_tol=1e-6)


def vllm_entry(logprobs: dict[int, float], actual: int) -> dict[str, dict]:
    """vLLM's answer for one position: ranks count the tokens at least as likely (`>=`)."""
    out = {}
    for i in [*sorted(logprobs, key=lambda i: -logprobs[i]), actual]:
        rank = sum(1 for v in logprobs.values() if v >= logprobs[i])
        out[str(i)] = {"logprob": logprobs[i], "rank": rank, "decoded_token": str(i)}
    return out


def test_the_vllm_path_counts_a_tie_with_the_top1_as_rank_1():
    logprobs = {4: math.log(0.4), 7: math.log(0.4), 2: math.log(0.2)}  # 4 and 7 tie
    student = parse_positions([None, vllm_entry(logprobs, 7)], [9, 7], 1, 3)
    teacher = parse_positions([None, vllm_entry(logprobs, 7)], [9, 7], 1, 3)
    assert teacher[0].ranks[7] == 2  # what the server says
    result, _ = replay_from_positions(student, teacher, [7], top_k=2, vocab_size=10)
    assert result.teacher_rank == [1]
    below = parse_positions([None, vllm_entry(logprobs, 2)], [9, 2], 1, 3)
    result, _ = replay_from_positions(below, below, [2], top_k=2, vocab_size=10)
    assert result.teacher_rank == [3]  # no tie: the server's rank stands
