"""The rules both backends follow, stated once in `core.rules`."""

from __future__ import annotations

import pytest
from vrollout.rules import (
    Policy,
    check_teacher_template,
    cut_at_eos,
    eos_set,
    pedagogical_step,
    unacceptable,
)


def test_eos_set_prefers_the_generation_config():
    assert eos_set([2, 7], 0) == {2, 7}
    assert eos_set(0, 2) == {0}  # an id of 0 is an id, not "unset"
    assert eos_set(None, 2) == {2}
    assert eos_set(None, None) == set()
    assert cut_at_eos([5, 2, 6, 2], {2}) == [5, 2] and cut_at_eos([5, 6], {2}) == [5, 6]


def test_the_intervention_rule():
    policy = Policy(threshold=0.1, max_rank=3)
    assert not unacceptable(policy, 0.1, 3)
    assert unacceptable(policy, 0.099, 1) and unacceptable(policy, 0.9, 4)
    assert not unacceptable(Policy(threshold=0.1), 0.5, 1000)  # no rank limit


def test_a_step_asks_the_logprobs_of_the_token_taken():
    asked = []

    def logprobs(token: int) -> tuple[float, float]:
        asked.append(token)
        return -1.0, -2.0

    step = pedagogical_step(
        Policy(threshold=0.5), 7, teacher_prob=0.2, rank=3, teacher_top1=9, logprobs=logprobs
    )
    assert (step["token"], step["intervened"], asked) == (9, True, [9])
    step = pedagogical_step(
        Policy(threshold=0.1), 7, teacher_prob=0.2, rank=3, teacher_top1=9, logprobs=logprobs
    )
    assert (step["token"], step["intervened"], step["student_logprob"]) == (7, False, -1.0)


@pytest.mark.parametrize("template", ["{prompt} only", "{privileged} only", ""])
def test_a_teacher_template_must_place_prompt_and_privileged(template):
    with pytest.raises(ValueError, match=r"\{prompt\} and \{privileged\}"):
        check_teacher_template(template)
    check_teacher_template("{prompt} / {privileged}")
