"""`vrollout analyze STEP.jsonl --from auto --out DIR` on a rollout dump written by verl's own
writer (tests/support/framework_writers.py): the preset is detected, its fields reach the
analyses, and a dump whose prompts lost the template's special tokens is refused line by line
with the reason. A tinker-cookbook logtree trace is read episode by episode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.framework_writers import load_tinker_logtree, tinker_problem_env_log, verl_write_generations
from support.tiny import tiny_pair
from vrollout.cli.commands import main

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
    """Prompts that lost their special tokens and that no conversation renders back to (text before
    the template's start here) are refused line by line; whole ones are rendered back
    (tests/inputs/test_reconstruct.py)."""
    tok = saved_student(tmp_path / "student", None)  # <|im_start|>...: special tokens, dropped by verl
    dump = verl_dump(tok, tmp_path / "rollout_data", step=1)
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    dump.write_text("".join(json.dumps({**r, "input": "Note: " + r["input"]}) + "\n" for r in rows))
    code, err = analyze(tmp_path / "student", dump, tmp_path / "out.jsonl", capsys)
    assert code == 1, err
    assert f"{dump}:1: " in err and "skip_special_tokens=True" in err


def tinker_trace_file(request, directory):
    """An iteration's `train_logtree.json` as tinker-cookbook 0.6.1 writes it (its logtree from
    its wheel, ProblemEnv.step's logging calls, the trainer's `RL Iteration N` title)."""
    try:
        logtree, formatters = load_tinker_logtree(Path(request.config.cache.mkdir("tinker-cookbook-wheel")))
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"the tinker-cookbook wheel cannot be downloaded here: {exc}")
    directory.mkdir(parents=True)
    with logtree.init_trace("RL Iteration 7", path=directory / "train.html") as trace:
        for question, answer in QUESTIONS:
            with logtree.scope_header("Group Rollout"):
                convo = [{"role": "user", "content": question}]
                reply = {"role": "assistant", "content": "The answer is 4."}
                tinker_problem_env_log(logtree, formatters, convo, reply, answer, 1.0, float(answer == "4"))
    logtree.write_trace_json(trace, directory / "train_logtree.json")
    return directory / "train_logtree.json"


@pytest.mark.parametrize("preset", ["tinker", "auto"])
def test_a_tinker_logtree_trace_is_read_episode_by_episode(request, tmp_path, capsys, preset):
    saved_student(tmp_path / "student", None)
    trace = tinker_trace_file(request, tmp_path / "iteration_000007")
    argv = ["analyze", str(trace), "--from", preset, "--out", str(tmp_path / "out.jsonl"), "--no-store"]
    code = main([*argv, "--student", str(tmp_path / "student"), "--device", "cpu", "--dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    found = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    trajectories = [a["trajectory"] for a in found]
    assert [(t["step"], t["score"], t["correct"], t["reference_answer"]) for t in trajectories] == [
        (7, 1.0, True, "4"),
        (7, 0.0, False, "6"),
    ]
    assert [a["job"]["line"] for a in found] == [1, 2]  # numbered by episode
