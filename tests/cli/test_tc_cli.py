"""`vrollout analyze` with --teacher-context, --teacher-template and the chat template flags:
the sibling pass over the whole file (every shard), feedback lines, clear line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vrollout.cli.commands import main

KWARG_TEMPLATE = (
    "{% if enable_thinking is defined and not enable_thinking %}/no_think\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
Q = "What is 6*7?"
LINES = [
    {"id": "a", "prompt": Q, "response": "6*7 = 41.", "reference_answer": "42"},
    {"id": "b", "prompt": Q, "response": "6*7 = 42.", "reference_answer": "42"},
    {"id": "c", "prompt": Q, "response": "It is 42.", "correct": True},
    {"id": "d", "prompt": "What is 2+2?", "response": "5", "reference_answer": "4"},
    {"id": "e", "prompt": Q, "response": "41", "teacher_context": "feedback", "feedback": "Off by one."},
]


@pytest.fixture(scope="module")
def model(tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tc") / "tiny-model"
    tiny.student.model.save_pretrained(folder)
    tok = tiny.student.tokenizer
    saved, tok.chat_template = tok.chat_template, KWARG_TEMPLATE
    try:
        tok.save_pretrained(folder)
    finally:
        tok.chat_template = saved  # the session's tiny pair is shared
    return folder


def analyze(model: Path, *args: str) -> list[str]:
    return ["analyze", *args, "--student", str(model), "--device", "cpu", "--dtype", "float32", "--no-store"]


def run(model: Path, tmp_path: Path, *flags: str, lines=LINES) -> tuple[int, dict[str, dict], str, Path]:
    src = tmp_path / "runs.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.jsonl"
    code = main(analyze(model, str(src), "--out", str(out), *flags))
    found = {a["trajectory"]["id"]: a for a in map(json.loads, out.read_text().splitlines())}
    return code, found, str(src), out


def test_sibling_flag(model, tmp_path, capsys):
    code, found, src, _ = run(model, tmp_path, "--teacher-context", "sibling")
    err = capsys.readouterr().err
    assert code == 1  # one line has no sibling
    assert {k: a["teacher"]["sibling"] for k, a in found.items()} == {
        "a": {"line": 2, "id": "b"},
        "b": {"line": 3, "id": "c"},
        "c": {"line": 2, "id": "b"},
        "e": None,
    }
    assert found["e"]["teacher"]["context_kind"] == "feedback"
    assert f"{src}:4: teacher_context sibling: no successful sibling: no other line of the file" in err
    # A shard still picks siblings from the whole file (the first pass reads every line).
    _, shard, _, _ = run(model, tmp_path, "--teacher-context", "sibling", "--shard", "0/2")
    assert {k: a["teacher"]["sibling"] for k, a in shard.items()} == {
        "a": {"line": 2, "id": "b"},
        "c": {"line": 2, "id": "b"},
        "e": None,
    }


def test_a_line_asking_for_a_sibling_needs_the_flag(model, tmp_path, capsys):
    lines = [{**LINES[0], "teacher_context": "sibling"}, LINES[1]]
    code, found, src, _ = run(model, tmp_path, lines=lines)
    assert code == 1 and list(found) == ["b"]
    assert f"{src}:1: teacher_context sibling: the file was not indexed" in capsys.readouterr().err


def test_template_and_chat_template_flags(model, tmp_path, capsys):
    lines = [{"id": "p", "prompt": Q, "response": "41", "privileged": "42"}]
    flags = ["--teacher-template", "Hint: {privileged}\n{prompt}", "--teacher-chat-template-kwargs"]
    code, found, _, _ = run(model, tmp_path, *flags, '{"enable_thinking": false}', lines=lines)
    assert code == 0, capsys.readouterr().err
    teacher, student = found["p"]["teacher"], found["p"]["student"]
    assert (
        teacher["context_text"].startswith("/no_think\n")
        and "Hint: 42\nWhat is 6*7?" in teacher["context_text"]
    )
    assert not student["context_text"].startswith("/no_think")  # the student's own arguments: none
    code, found, _, _ = run(
        model, tmp_path, "--student-chat-template-kwargs", '{"enable_thinking": false}', lines=lines
    )
    assert found["p"]["student"]["context_text"].startswith("/no_think\n")


def test_bad_flags_are_said_before_any_model_work(model, tmp_path, capsys):
    src = tmp_path / "runs.jsonl"
    src.write_text(json.dumps(LINES[0]) + "\n")
    out = str(tmp_path / "x.jsonl")
    assert main(analyze(model, str(src), "--out", out, "--teacher-template", "{prompt}")) == 2
    assert (
        "teacher_template: the teacher template must contain {prompt} and {privileged}"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(analyze(model, str(src), "--out", out, "--teacher-chat-template-kwargs", "[1]"))
    assert "a JSON object is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(analyze(model, str(src), "--out", out, "--teacher-context", "oracle"))
