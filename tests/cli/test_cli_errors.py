"""The CLI's settings: a refused value or models that do not load end in one line naming the flag
or variable and the problem (exit status 2, never a traceback); a flag that only sets a setting
(`--no-noise-floor`) reaches the analyses."""

from __future__ import annotations

import json

import pytest
from support import free_port
from vrollout.cli.commands import main


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    return path


def said(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


def test_a_refused_setting_names_its_flag_or_variable(src, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    assert main(["analyze", str(src), "--out", out, "--teacher-max-memory", "{oops"]) == 2
    assert said(capsys).startswith("error: --teacher-max-memory: max memory: not valid JSON")
    assert main(["pedagogical", str(src), "--out", out, "--dtype", "float8"]) == 2
    assert "--dtype: dtype must be one of auto, float32, bfloat16, float16, got 'float8'" in said(capsys)
    monkeypatch.setenv("VROLLOUT_STUDENT_DEVICE_MAP", "everywhere")  # the same value from the shell
    assert main(["localize", str(src), "--out", out]) == 2
    assert said(capsys).startswith("error: VROLLOUT_STUDENT_DEVICE_MAP: a device map is one of auto")


def test_models_that_do_not_load_are_one_line(src, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    for argv in (["analyze", str(src), "--out", str(tmp_path / "out")], ["serve", "--port", "0"]):
        assert main([*argv, "--student", str(missing), "--database", str(tmp_path / "db.sqlite3")]) == 2
        err = said(capsys)
        assert "the models could not be loaded (backend local" in err and str(missing) in err, err


def test_a_vllm_server_that_does_not_answer_stops_serve_before_it_starts(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["serve", "--teacher-url", url, "--port", "0", "--database", str(tmp_path / "db")]) == 2
    # serve loads the default student first: on a machine whose model cache is not built yet its
    # GGUF conversion draws a progress bar on stderr before the error, which is the last line.
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: "), err
    assert f"no teacher server answered: ['{url}']" in last


def test_no_noise_floor_flag(tiny_folder, tmp_path, capsys):
    src = tmp_path / "runs.jsonl"
    src.write_text(json.dumps({"prompt": "hi", "response": "hello", "privileged": "say hello"}) + "\n")
    common = ["--student", str(tiny_folder), "--device", "cpu", "--no-store"]
    floors = []
    for flags in ([], ["--no-noise-floor"]):
        out = tmp_path / f"out{len(flags)}.jsonl"
        assert main(["analyze", str(src), "--out", str(out), *common, *flags]) == 0, capsys.readouterr().err
        floors.append(json.loads(out.read_text())["preflight"]["noise_floor"])
    assert floors[0]["computed"] is True
    assert floors[1]["computed"] is False and "not asked for" in floors[1]["skipped"]
