"""One pipeline for files of lines: `vrollout analyze`, `vrollout pedagogical` and `analyze_many`
read the same file with the same line errors, in the same words, and the same unknown-key warning
(naming the field a misspelt key may mean)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from support import tiny_settings
from vrollout.cli.commands import main
from vrollout.notebook import VirtualRollout
from vrollout.pipeline.analyzer import Analyzer

GOOD = {"prompt": "What is 2+2?", "response": "It is 4."}
FILE = [
    json.dumps(GOOD),
    "{broken",
    json.dumps({"prompt": "x", "response": ""}),
    json.dumps({**GOOD, "reference": "4"}),  # not a field, close to one: kept, with a guess
    json.dumps({**GOOD, "privilged": "4"}),  # a near miss: the line's error
]
FLAGS = ["--device", "cpu", "--dtype", "float32", "--no-store"]


def said(capsys, src: Path) -> list[str]:
    """The lines about the file's lines (not the progress bar or the totals)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{src}:")]


def test_every_driver_reports_the_lines_alike(tiny, tiny_folder, tmp_path, capsys):
    src = tmp_path / "runs.jsonl"
    src.write_text("\n".join(FILE) + "\n")
    model = ["--student", str(tiny_folder), *FLAGS]
    assert main(["analyze", str(src), "--out", str(tmp_path / "a.jsonl"), *model]) == 1
    analyzed = said(capsys, src)
    out = str(tmp_path / "ped")
    assert main(["pedagogical", str(src), "--out", out, "--max-new-tokens", "2", *model]) == 1
    assert said(capsys, src) == analyzed
    assert [line.split(": ")[0] for line in analyzed] == [f"{src}:{n}" for n in (2, 3, 5, 4)]
    assert analyzed[2] == f"{src}:5: `privilged`: did you mean `privileged`?"
    guess = "`reference` is not a field: kept in meta (did you mean `reference_answer`?)"
    assert analyzed[3] == f"{src}:4: warning: {guess} (1 line)"
    vr = VirtualRollout(Analyzer(tiny, tiny_settings(tmp_path)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = list(vr.analyze_many(src, progress=False, errors="skip"))
    assert [a["trajectory"]["meta"] for a in kept] == [{}, {"reference": "4"}]
    messages = [str(w.message) for w in caught]
    errors = {line.split(": ", 1)[0].rsplit(":", 1)[1]: line.split(": ", 1)[1] for line in analyzed[:3]}
    for number, message in errors.items():
        assert f"trajectory {number} skipped: {message}" in messages
    assert (
        "trajectory 4: `reference` is not a field: kept in meta (did you mean `reference_answer`?)"
        in messages
    )
