"""Chat template arguments on the real default model (SmolLM2-135M-Instruct): its template has no
switches, so an argument such as enable_thinking changes nothing, and the analysis says so."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_model

LINE = {"prompt": "What is 17*23?", "response": "17*23 = 391.", "privileged": "391"}


def test_smollm2_ignores_enable_thinking_and_says_so(real_analyzer):
    pair = real_analyzer.pair
    plain = real_analyzer.prepare(LINE).ctx
    pair.teacher_chat_template_kwargs = {"enable_thinking": False}
    try:
        given = real_analyzer.prepare(LINE).ctx
    finally:
        pair.teacher_chat_template_kwargs = {}
    assert given.teacher_ids == plain.teacher_ids and given.student_ids == plain.student_ids
    assert given.teacher_text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert (
        "the teacher's chat template does not read enable_thinking (teacher_chat_template_kwargs): "
        "it changes nothing there"
    ) in given.notes


def test_smollm2_feedback_context(real_analyzer):
    line = {
        "prompt": "What is 17*23?",
        "response": "381",
        "teacher_context": "feedback",
        "feedback": "Wrong.",
    }
    analysis = real_analyzer.run(real_analyzer.prepare(line), store=False)
    assert analysis["teacher"]["context_kind"] == "feedback" and analysis["teacher"]["privileged"] == "Wrong."
    assert (
        "Feedback on a previous attempt (privileged; the student does not see this):\nWrong.<|im_end|>"
        in (analysis["teacher"]["context_text"])
    )
