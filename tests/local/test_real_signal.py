"""Surface or fork, forks that matter and teachability on the real default model (SmolLM2-135M,
greedy): its own answer to "What is 17*23?" is 381, and the teacher, shown "17*23 = 391", would
write 391."""

from __future__ import annotations

import pytest
from vrollout.metrics.signal import headline
from vrollout.pipeline.analyzer import Analyzer

pytestmark = pytest.mark.real_model


def test_the_wrong_digit_is_a_fork_that_matters(real_analyzer: Analyzer):
    a = real_analyzer.analyze(
        {
            "prompt": "What is 17*23?",
            "privileged": "17*23 = 391",
            "reference_answer": "391",
            "continuation_tokens": 8,
            "recovery": True,
            "recovery_max_new_tokens": 16,
            "generation": {"max_new_tokens": 24},
        }
    )
    assert a["response_text"].startswith("17*23 = 381")  # the student's own greedy answer
    steps, s = a["steps"], a["summary"]
    divergent = [x for x in steps if not x["agree"]]
    assert divergent and all(x["divergence_kind"] in ("surface", "fork") for x in divergent)
    assert s["divergences_classified"] == s["divergences"] == len(divergent)
    # The first divergence is the wrong digit: the teacher says "9" where the student wrote "8".
    # Its continuation ("91") never re-joins "81.", and the teacher reaches 391 from "17*23 = 3"
    # but not from "17*23 = 38": a fork that matters. The student had "9" among its own top-k.
    wrong = steps[s["first_divergence"]]
    assert (wrong["token"], wrong["teacher_top1"]) == ("8", "9")
    assert wrong["divergence_kind"] == "fork" and wrong["fork_matters"] is True
    assert wrong["correction_in_student_topk"] is True and wrong["teacher_mass_on_student_topk"] > 0.5
    # Later forks come after the answer is lost: they do not matter.
    assert all(x["fork_matters"] is False for x in divergent if x["position"] > wrong["position"])
    assert s["forks_that_matter"] == 1 and s["divergences_fork"] + s["divergences_surface"] == len(divergent)
    text, missing = headline(s)
    assert f"({s['forks_that_matter']} that matter)" in text and "of the signal" in text and not missing
