"""The CLI's objective flags (docs/objectives.md, "Options") reach every line's analysis."""

from __future__ import annotations

import json

from vrollout.cli import main


def test_objective_flags_set_every_line(tiny_folder, tmp_path, capsys):
    src = tmp_path / "runs.jsonl"
    lines = [
        {"prompt": "hi", "response": "hello there", "privileged": "say hello"},
        {"prompt": "hi", "response": "hello", "privileged": "say hello", "jsd_beta": 0.9},  # its own
    ]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    flags = ["--objectives", "k1,jsd", "--objective-k", "7", "--jsd-beta", "0.25", "--clip-tau", "0.2"]
    common = ["--student", str(tiny_folder), "--device", "cpu", "--no-store", "--no-noise-floor"]
    assert main(["analyze", str(src), "--out", str(out), *common, *flags]) == 0, capsys.readouterr().err
    first, second = (json.loads(text) for text in out.read_text().splitlines())
    assert first["objective_options"] == {
        "objectives": ["k1", "jsd"],
        "objective_k": 7,
        "jsd_beta": 0.25,
        "clip_tau": 0.2,
        "tip_entropy_threshold": None,
        "tip_divergence_threshold": None,
    }
    assert set(first["steps"][0]["objectives"]) == {"k1", "jsd"}
    assert second["objective_options"]["jsd_beta"] == 0.9  # a line's own option wins


def test_an_unknown_objective_is_the_line_error(tiny_folder, tmp_path, capsys):
    src = tmp_path / "runs.jsonl"
    src.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["--student", str(tiny_folder), "--device", "cpu", "--no-store", "--no-noise-floor"]
    main(["analyze", str(src), "--out", str(out), *common, "--objectives", "k1,kl9"])
    assert "objectives" in capsys.readouterr().err
