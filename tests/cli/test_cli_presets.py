"""`vrollout analyze STEP.jsonl --from auto --out DIR` on a rollout dump written by verl's own
writer (tests/support/framework_writers.py): the preset is detected, its fields reach the
analyses, and a dump whose prompts lost the template's special tokens is refused line by line
with the reason."""

from __future__ import annotations

import json

from support.framework_writers import verl_write_generations
from support.tiny import tiny_pair
from vrollout.cli import main

# A chat template without special tokens (a base model's): verl's decoding loses nothing of it.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
QUESTIONS = [("What is 2+2?", "4"), ("What is 3+3?", "6")]


def saved_student(folder, template: str | None):
    pair = tiny_pair()
    if template is not None:
        pair.student.tokenizer.chat_template = template
    pair.student.model.save_pretrained(folder)
    pair.student.tokenizer.save_pretrained(folder)
    return pair.student.tokenizer


def verl_dump(tok, directory, step: int):
    """What verl's `_log_rollout_data` hands its writer: ids decoded with skip_special_tokens."""
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q, _ in QUESTIONS
    ]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    answer = tok(" 4.<|im_end|>", add_special_tokens=False)["input_ids"]
    verl_write_generations(
        inputs=tok.batch_decode(ids, skip_special_tokens=True),
        outputs=tok.batch_decode([answer, answer], skip_special_tokens=True),
        gts=[a for _, a in QUESTIONS],
        scores=[1.0, 0.0],
        reward_extra_infos_dict={"acc": [True, False]},
        dump_path=str(directory),
        global_steps=step,
    )
    return directory / f"{step}.jsonl"


def analyze(student, source, out, capsys) -> tuple[int, str]:
    argv = [
        "analyze",
        str(source),
        "--from",
        "auto",
        "--out",
        str(out),
        "--no-store",
        "--student",
        str(student),
    ]
    code = main([*argv, "--device", "cpu", "--dtype", "float32"])
    return code, capsys.readouterr().err


def test_a_verl_step_dump_is_detected_and_analysed(tmp_path, capsys):
    tok = saved_student(tmp_path / "student", PLAIN_TEMPLATE)
    dump = verl_dump(tok, tmp_path / "rollout_data", step=3)
    code, err = analyze(tmp_path / "student", dump, tmp_path / "out", capsys)
    assert code == 0, err
    found = [json.loads(line) for line in (tmp_path / "out" / "analyses.jsonl").read_text().splitlines()]
    trajectories = [a["trajectory"] for a in found]
    assert [(t["step"], t["score"], t["correct"], t["reference_answer"]) for t in trajectories] == [
        (3, 1.0, True, "4"),
        (3, 0.0, False, "6"),
    ]
    assert all(t["rendered"] and t["meta"]["preset"] == "verl" for t in trajectories)
    assert all(a["steps"] for a in found)


def test_a_verl_dump_without_special_tokens_is_refused_with_the_reason(tmp_path, capsys):
    tok = saved_student(tmp_path / "student", None)  # <|im_start|>...: special tokens, dropped by verl
    dump = verl_dump(tok, tmp_path / "rollout_data", step=1)
    code, err = analyze(tmp_path / "student", dump, tmp_path / "out.jsonl", capsys)
    assert code == 1, err
    assert f"{dump}:1: " in err and "skip_special_tokens=True" in err
