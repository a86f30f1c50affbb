"""Teacher contexts (core.teacher_context): the sibling rule, feedback lines, per-line templates,
and each model's chat template arguments and prompt format reaching the rendered contexts."""

from __future__ import annotations

import json

import pytest
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.errors import BadTrajectory
from vrollout.inputs.teacher_context import FEEDBACK_TEMPLATE, SIBLING_TEMPLATE, SiblingIndex, teacher_options
from vrollout.inputs.trajectories import Trajectory
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.contexts import TokenLimit, render_role
from vrollout.rules import check_prompt_format, check_teacher_template

Q = "What is 6*7?"
# Several answers per prompt: right ones (by `correct`, or by the reference), wrong ones, and a
# prompt whose only answers are wrong.
FILE = [
    (1, {"prompt": Q, "response": "6*7 = 41.", "reference_answer": "42"}),  # wrong
    (2, {"prompt": Q, "response": "6*7 = 42.", "reference_answer": "42"}),  # right (checked)
    (3, {"prompt": Q, "response": "It is 42.", "correct": True}),  # right (given)
    (4, {"prompt": Q, "response": "6*7 = 42.", "reference_answer": "42"}),  # a duplicate of line 2
    (5, {"prompt": "What is 2+2?", "response": "5", "reference_answer": "4"}),  # no right answer
    (6, {"prompt": "What is 2+2?", "response": "22", "correct": False}),
    (7, {"prompt": "Name a prime.", "response": "9", "correct": True}),  # alone with its prompt
    (8, {"messages": [{"role": "user", "content": Q}], "response": "42?"}),  # the same prompt as messages
]


def text_traj(prompt: str, response: str | None = None, **kw) -> Trajectory:
    return Trajectory(
        "prompt_response", messages=[{"role": "user", "content": prompt}], response_text=response, **kw
    )


@pytest.fixture
def analyzer(tiny, tmp_path) -> Analyzer:
    return Analyzer(tiny, tiny_settings(tmp_path))


def prepare_file(analyzer: Analyzer, lines, options=None):
    options = {"teacher_context": "sibling", **(options or {})}
    index = analyzer.index_siblings(lines, options, None)
    prepared, failed = analyzer.prepare_lines(lines, options, None, {}, index)
    return dict(prepared), {n: e.message for n, e in failed}


def test_sibling_is_the_first_successful_other_response(analyzer):
    prepared, failed = prepare_file(analyzer, FILE)
    sibling = {n: (p.ctx.sibling["line"], p.ctx.privileged) for n, p in prepared.items()}
    assert sibling[1] == (2, "6*7 = 42.")  # the first right answer in file order
    assert sibling[2] == (3, "It is 42.")  # never itself: the next right one
    assert sibling[3] == (2, "6*7 = 42.")
    assert sibling[4] == (3, "It is 42.")  # its duplicate (line 2) would hand it its own response
    assert sibling[8] == (2, "6*7 = 42.")  # `messages` and a prompt string are the same prompt
    for n, p in prepared.items():
        assert p.ctx.sibling["line"] != n and p.ctx.context_kind == "sibling"
        assert "A successful attempt at this problem" in p.ctx.teacher_text
        assert p.ctx.privileged in p.ctx.teacher_text and p.ctx.privileged not in p.ctx.student_text
    assert set(failed) == {5, 6, 7}
    assert "1 other line of the file has this prompt, none with a successful response" in failed[5]
    assert (
        failed[7]
        == "teacher_context sibling: no successful sibling: no other line of the file has this prompt"
    )


def test_sibling_choice_is_stored_in_the_line_and_in_the_analysis(analyzer):
    index = analyzer.index_siblings(FILE, {"teacher_context": "sibling"}, None)
    prep, line, _ = analyzer.prepare_line(FILE[0][1], {"teacher_context": "sibling"}, None, (1, index))
    assert line["sibling"] == {"response": "6*7 = 42.", "line": 2, "id": None}
    again = analyzer.prepare(line)  # a job runs its stored line later: the same contexts
    assert again.ctx.teacher_ids == prep.ctx.teacher_ids
    analysis = analyzer.run(again, store=False)
    assert analysis["teacher"]["context_kind"] == "sibling"
    assert analysis["teacher"]["sibling"] == {"line": 2, "id": None}
    assert analysis["teacher"]["privileged"] == "6*7 = 42."


def test_sibling_without_a_file_or_an_index_is_a_clear_error(analyzer):
    with pytest.raises(BadTrajectory, match="only a file's lines have siblings"):
        analyzer.prepare({"prompt": Q, "response": "41", "teacher_context": "sibling"})
    with pytest.raises(BadTrajectory, match="the file was not indexed for siblings"):
        analyzer.prepare_line({"prompt": Q, "response": "41", "teacher_context": "sibling"}, {}, None)
    with pytest.raises(BadTrajectory, match="needs a prompt as text"):
        analyzer.prepare(
            {"prompt_ids": [5, 6], "response_ids": [7], "teacher_context": "feedback", "feedback": "x"}
        )


def test_index_memory_is_bounded_per_prompt():
    index = SiblingIndex()
    for n in range(1, 50):
        index.add(n, text_traj(Q, f"answer {n}", correct=True))
    assert index.seen == {next(iter(index.seen)): 49}
    assert [s.line for s in next(iter(index.kept.values()))] == [1, 2]  # two kept, whatever the count
    assert index.pick(1, text_traj(Q, "answer 1")).line == 2
    assert index.pick(30, text_traj(Q, "answer 30")).line == 1
    index.add(50, text_traj("other", None, correct=True))  # no response: never a sibling
    index.add(51, text_traj("other", "x"))
    with pytest.raises(BadTrajectory, match="1 other line"):
        index.pick(51, text_traj("other", "x"))


def test_feedback_lines(analyzer):
    line = {"prompt": Q, "response": "41", "teacher_context": "feedback", "feedback": "Wrong: 6*7 is 42."}
    prep = analyzer.prepare(line)
    assert prep.ctx.context_kind == "feedback" and prep.ctx.privileged == "Wrong: 6*7 is 42."
    expected = FEEDBACK_TEMPLATE.format(prompt=Q, feedback="Wrong: 6*7 is 42.")
    assert expected in prep.ctx.teacher_text and "Wrong" not in prep.ctx.student_text
    with pytest.raises(BadTrajectory, match="needs the line's feedback field"):
        analyzer.prepare({"prompt": Q, "response": "41", "teacher_context": "feedback"})
    # A file-level kind fills lines that set none; a line's own kind wins; privileged is unused.
    prep, _, _ = analyzer.prepare_line(
        {"prompt": Q, "response": "41", "feedback": "close", "privileged": "42"},
        {"teacher_context": "feedback"},
        None,
    )
    assert prep.ctx.privileged == "close"
    assert "the privileged field is not used: the teacher context is feedback" in prep.ctx.notes
    prep, _, _ = analyzer.prepare_line(
        {"prompt": Q, "response": "41", "privileged": "42", "teacher_context": "privileged"},
        {"teacher_context": "feedback"},
        None,
    )
    assert prep.ctx.context_kind == "privileged" and prep.ctx.privileged == "42"


def test_per_line_and_per_file_templates(analyzer):
    line = {
        "prompt": Q,
        "response": "41",
        "privileged": "42",
        "teacher_template": "Hint {privileged}. {prompt}",
    }
    assert "Hint 42. What is 6*7?" in analyzer.prepare(line).ctx.teacher_text
    feedback = {"prompt": Q, "response": "41", "teacher_context": "feedback", "feedback": "no"}
    prep, _, _ = analyzer.prepare_line(feedback, {"teacher_template": "{prompt} [grader: {feedback}]"}, None)
    assert "What is 6*7? [grader: no]" in prep.ctx.teacher_text
    default = analyzer.prepare({"prompt": Q, "response": "41", "privileged": "42"})
    assert "Reference solution (privileged" in default.ctx.teacher_text  # the settings' template
    for bad, words in [
        ("{prompt} only", "must contain {prompt} and {privileged}"),
        ("{prompt} {privileged} {answer}", "{answer}: only {prompt} {privileged} {feedback}"),
        ("{prompt {privileged}", "not a valid format string"),
    ]:
        with pytest.raises(BadTrajectory, match="teacher_template: ") as info:
            analyzer.prepare({**line, "teacher_template": bad})
        assert words in info.value.message
    with pytest.raises(BadTrajectory, match="teacher_context must be privileged, sibling or feedback"):
        teacher_options("siblings", None)
    assert teacher_options("feedback", "{prompt}{feedback}") == {
        "teacher_context": "feedback",
        "teacher_template": "{prompt}{feedback}",
    }
    assert SIBLING_TEMPLATE.count("{privileged}") == 1


def test_template_rules():
    check_teacher_template("{prompt} {feedback}")
    check_teacher_template("{{literal}} {prompt} {privileged}")
    with pytest.raises(ValueError, match="only {prompt} may be used"):
        check_prompt_format("{prompt} {x}")
    with pytest.raises(ValueError, match="must contain {prompt}"):
        check_prompt_format("Answer:")


KWARG_TEMPLATE = (
    "{% if enable_thinking is defined and not enable_thinking %}/no_think\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_kwargs_reach_each_context(tmp_path):
    pair = tiny_pair(teacher_seed=1)
    pair.student.tokenizer.chat_template = KWARG_TEMPLATE  # one tokenizer: both models'
    pair.teacher_chat_template_kwargs = {"enable_thinking": False}
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    prep = analyzer.prepare({"prompt": Q, "response": "42", "privileged": "42"})
    assert prep.ctx.teacher_text.startswith("/no_think\n") and "/no_think" not in prep.ctx.student_text
    assert prep.ctx.teacher_ids[: len(pair.teacher.tokenizer("/no_think\n")["input_ids"])] == list(
        pair.teacher.tokenizer("/no_think\n", add_special_tokens=False)["input_ids"]
    )
    pair.student_chat_template_kwargs = {"enable_thinking": False}
    assert analyzer.prepare({"prompt": Q, "response": "42"}).ctx.student_text.startswith("/no_think\n")
    assert not any("does not read" in note for note in prep.ctx.notes)
    pair.teacher_chat_template_kwargs = {"enable_thinking": False, "reasoning_effort": "low"}
    notes = analyzer.prepare({"prompt": Q, "response": "42"}).ctx.notes
    assert (
        "the teacher's chat template does not read reasoning_effort (teacher_chat_template_kwargs): "
        "it changes nothing there"
    ) in notes


def test_teacher_prompt_format_for_a_base_teacher(tmp_path):
    pair = tiny_pair(teacher_seed=1)
    pair.teacher.tokenizer = pair.teacher.tokenizer.__class__.from_pretrained(_saved(pair, tmp_path))
    pair.teacher.tokenizer.chat_template = None  # a base model: no chat template
    pair.teacher_prompt_format = "Question: {prompt}\nAnswer:"
    limit = TokenLimit("teacher context", 4096, "VROLLOUT_MAX_CONTEXT_TOKENS")
    ids, text, templated = render_role(pair, "teacher", [{"role": "user", "content": Q}], limit)
    assert (text, templated) == (f"Question: {Q}\nAnswer:", False)
    assert ids == list(pair.teacher.tokenizer(text, add_special_tokens=False)["input_ids"])
    prep = Analyzer(pair, tiny_settings(tmp_path)).prepare(
        {"prompt": Q, "response": "42", "privileged": "42"}
    )
    assert prep.ctx.teacher_text.startswith(
        f"Question: {Q}\n\nReference solution"
    ) and prep.ctx.teacher_text.endswith("\nAnswer:")
    assert "the teacher has no chat template: its context is teacher_prompt_format" in prep.ctx.notes
    assert prep.ctx.student_text.startswith("<|im_start|>user")  # the student keeps its template


def _saved(pair, tmp_path) -> str:
    folder = tmp_path / "tok"
    pair.teacher.tokenizer.save_pretrained(folder)
    return str(folder)


def test_settings_read_the_json_of_the_environment(monkeypatch, tmp_path):
    from vrollout.config import Settings

    monkeypatch.setenv("VROLLOUT_TEACHER_CHAT_TEMPLATE_KWARGS", json.dumps({"enable_thinking": False}))
    monkeypatch.setenv("VROLLOUT_TEACHER_PROMPT_FORMAT", "Q: {prompt}\nA:")
    settings = Settings(database=tmp_path / "db")
    assert settings.teacher_chat_template_kwargs == {"enable_thinking": False}
    assert settings.student_chat_template_kwargs == {}
    assert settings.teacher_prompt_format == "Q: {prompt}\nA:"
    with pytest.raises(ValueError, match="must contain {prompt}"):
        Settings(database=tmp_path / "db", teacher_prompt_format="A:")


def test_analyze_many_picks_siblings_over_the_whole_input(analyzer, tmp_path):
    from vrollout.notebook import VirtualRollout

    vr = VirtualRollout(analyzer)
    lines = [obj for _, obj in FILE[:4]]
    found = list(vr.analyze_many(iter(lines), teacher_context="sibling", progress=False))  # an iterator
    assert [a["teacher"]["sibling"]["line"] for a in found] == [1, 2, 1, 2]  # indices from 0
    src = tmp_path / "runs.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    found = list(vr.analyze_many(src, teacher_context="sibling", progress=False))  # a path: lines from 1
    assert [a["teacher"]["sibling"]["line"] for a in found] == [2, 3, 2, 3]
    with pytest.raises(BadTrajectory, match="trajectory 4: teacher_context sibling: no successful sibling"):
        list(vr.analyze_many([*lines, FILE[4][1]], teacher_context="sibling", progress=False))
    with pytest.raises(BadTrajectory, match="teacher_template: "):
        list(vr.analyze_many(lines, teacher_template="{prompt}", progress=False))


def test_the_models_say_how_contexts_are_rendered(tiny_client):
    models = tiny_client.get("/api/models").json()
    assert models["student_chat_template_kwargs"] == {} and models["teacher_prompt_format"] is None
