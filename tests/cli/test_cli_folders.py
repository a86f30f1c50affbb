"""`vrollout analyze|localize|pedagogical` on a run's folder as a framework leaves it (one JSONL
per step: 1.jsonl, 2.jsonl, ..., 10.jsonl), a glob or several files: the same analyses as the
one file of all their lines, bad lines named FILE:LINE of their own file, and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vrollout.cli.commands import main

MODEL_FLAGS = ("--device", "cpu", "--dtype", "float32", "--no-store")


@pytest.fixture(scope="module")
def model(tiny_folder) -> Path:
    return tiny_folder


def step_lines(step: int) -> list[str]:
    return [
        json.dumps({"id": f"s{step}-{k}", "prompt": f"What is {step}+{k}?", "response": f"It is {step + k}.",
                    "step": step})
        for k in range(2)
    ]  # fmt: skip


def run_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "rollout_data"
    folder.mkdir()
    everything = []
    for step in (1, 2, 10):
        lines = step_lines(step)
        if step == 2:
            lines[1] = '{"id": "broken", "prompt": 3}'
        (folder / f"{step}.jsonl").write_text("\n".join(lines) + "\n")
        everything += lines
    return folder, everything


def analyses(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(found: list[dict]) -> list[tuple]:
    return [
        (a["job"]["line"], a["trajectory"]["id"], [s["teacher_logprob"] for s in a["steps"]]) for a in found
    ]


def test_a_folder_of_step_files_analyses_as_their_lines_in_one_file(model, tmp_path, capsys):
    folder, everything = run_folder(tmp_path)
    whole = tmp_path / "whole.jsonl"
    whole.write_text("\n".join(everything) + "\n")
    assert (
        main(["analyze", str(whole), "--out", str(tmp_path / "one"), "--student", str(model), *MODEL_FLAGS])
        == 1
    )
    capsys.readouterr()
    code = main(
        ["analyze", str(folder), "--out", str(tmp_path / "run"), "--student", str(model), *MODEL_FLAGS]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{folder / '2.jsonl'}:2: " in err  # the bad line, in its own file
    got, want = analyses(tmp_path / "run" / "analyses.jsonl"), analyses(tmp_path / "one" / "analyses.jsonl")
    assert [a["trajectory"]["id"] for a in got] == ["s1-0", "s1-1", "s2-0", "s10-0", "s10-1"]  # 10 after 2
    assert comparable(got) == comparable(want)
    assert "rollout_data (3 files)" in (tmp_path / "run" / "report.html").read_text()

    # A run killed after two lines (the third half written) goes on with --resume.
    kept = (tmp_path / "run" / "analyses.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run" / "analyses.jsonl").write_text("".join(kept[:2]) + kept[2][:40])
    argv = ["analyze", str(folder / "*.jsonl"), "--out", str(tmp_path / "run"), "--resume"]
    assert main([*argv, "--student", str(model), *MODEL_FLAGS]) == 1
    assert "resuming: 2 lines" in capsys.readouterr().err
    assert comparable(analyses(tmp_path / "run" / "analyses.jsonl")) == comparable(want)


def test_several_files_on_the_command_line_and_a_missing_one(model, tmp_path, capsys):
    folder, _ = run_folder(tmp_path)
    files = [str(folder / "10.jsonl"), str(folder / "1.jsonl")]
    out = tmp_path / "out.jsonl"
    assert main(["analyze", *files, "--out", str(out), "--student", str(model), *MODEL_FLAGS]) == 0
    assert [a["trajectory"]["id"] for a in analyses(out)] == ["s10-0", "s10-1", "s1-0", "s1-1"]
    capsys.readouterr()
    code = main(
        ["analyze", str(tmp_path / "nowhere" / "*.jsonl"), "--out", str(out), "--student", str(model)]
    )
    assert code == 2 and "no file matches" in capsys.readouterr().err


def test_localize_and_pedagogical_take_a_folder(model, tmp_path, capsys):
    folder = tmp_path / "steps"
    folder.mkdir()
    for i in (1, 2):
        line = {
            "prompt": f"What is {i}+{i}?",
            "steps": [f"{i}+{i}", f"= {2 * i}"],
            "label": -1,
            "id": f"p{i}",
        }
        (folder / f"{i}.jsonl").write_text(
            json.dumps(line) + "\n" + json.dumps({"prompt": "no steps"}) + "\n"
        )
    code = main(
        ["localize", str(folder), "--out", str(tmp_path / "loc"), "--student", str(model), *MODEL_FLAGS]
    )
    err = capsys.readouterr().err
    assert code == 1 and f"{folder / '1.jsonl'}:2: not a localization line" in err
    assert [a["job"]["line"] for a in analyses(tmp_path / "loc" / "analyses.jsonl")] == [1, 3]

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for i in (1, 2):
        line = {"prompt": f"What is {i}+{i}?", "privileged": str(2 * i), "reference_answer": str(2 * i)}
        (prompts / f"{i}.jsonl").write_text(json.dumps(line) + "\n")
    argv = [
        "pedagogical",
        str(prompts),
        "--out",
        str(tmp_path / "ped"),
        "--max-new-tokens",
        "4",
        "--include",
        "all",
    ]
    code = main([*argv, "--student", str(model), *MODEL_FLAGS])
    assert code == 0, capsys.readouterr().err
    assert len((tmp_path / "ped" / "rollouts.jsonl").read_text().splitlines()) == 2
