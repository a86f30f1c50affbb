"""Preflight on the real default model (SmolLM2-135M-Instruct as its own teacher): the noise
floor is exactly zero, its default system prompt is the same on both sides (no flag), and a
teacher given the answer verbatim copies more of it than one given only a hint."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_model

PROMPT = "What is 17*23? Show your working."
RESPONSE = "17*23 = 17*20 + 17*3 = 340 + 41 = 381. So the answer is 381."
VERBATIM = "17*23 = 17*20 + 17*3 = 340 + 51 = 391. So the answer is 391."
HINT = "Check the product 17*3 again."


@pytest.fixture(scope="module")
def pair_of_analyses(real_analyzer):
    line = {"prompt": PROMPT, "response": RESPONSE, "continuation_tokens": 8}
    return (
        real_analyzer.analyze({**line, "privileged": VERBATIM}),
        real_analyzer.analyze({**line, "privileged": HINT}),
    )


def test_real_self_teacher_noise_floor_is_zero_and_contexts_agree(pair_of_analyses):
    for a in pair_of_analyses:
        pf = a["preflight"]
        assert pf["context_diff"]["ok"] is True, pf["context_diff"]["flags"]
        floor = pf["noise_floor"]
        assert floor["computed"] and floor["same_context"]
        assert floor["reverse_kl_max"] == 0.0 and floor["max_abs_logprob_delta"] == 0.0
        assert floor["signal_reverse_kl_mean"] > 0


def test_real_verbatim_answer_is_copied_more_than_a_hint(pair_of_analyses):
    verbatim, hint = (a["preflight"]["leak"] for a in pair_of_analyses)
    v, h = verbatim["virtual_rollout"], hint["virtual_rollout"]
    assert v["share"] > h["share"], (v, h)
    assert v["longest_copied_run"] > h["longest_copied_run"]
    # The 135M teacher's virtual rollout copies no more than the response already does (its top-1
    # at the wrong digit is not the answer's: measured excess 0.0); its continuations do copy.
    assert verbatim["continuations"]["share"] > hint["continuations"]["share"]
    assert verbatim["continuations"]["longest_copied_run"] > hint["continuations"]["longest_copied_run"]
