"""inputs.rendered.restore_specials: verl dumps prompts decoded with skip_special_tokens=True (its
own writer, tests/support/framework_writers.py). The messages are recovered from the student's
template and the line is analysed on the text the model saw, said in its notes; equal to the same
line given as messages. A text that does not render back exactly stays refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import tiny_settings
from support.framework_writers import verl_write_generations
from vrollout.errors import BadTrajectory
from vrollout.inputs.presets import apply_preset
from vrollout.inputs.rendered import RECONSTRUCTED, restore_specials
from vrollout.models import ModelPair
from vrollout.pipeline.analyzer import Analyzer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}],
    [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2+2?"},
    ],
]


def verl_rows(tok, directory: Path) -> tuple[list[dict], list[str]]:
    """A step's dump by verl's writer: the rendered prompts' ids decoded without special tokens."""
    rendered = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    ids = [tok(text, add_special_tokens=False)["input_ids"] for text in rendered]
    verl_write_generations(
        inputs=tok.batch_decode(ids, skip_special_tokens=True),
        outputs=["It is 4."] * len(ids),
        gts=["4"] * len(ids),
        scores=[1.0] * len(ids),
        reward_extra_infos_dict={},
        dump_path=str(directory),
        global_steps=1,
    )
    rows = [json.loads(line) for line in (directory / "1.jsonl").read_text().splitlines()]
    return rows, rendered


def test_each_prompt_is_rendered_back_exactly(tiny: ModelPair, tmp_path: Path):
    tok = tiny.student.tokenizer
    rows, rendered = verl_rows(tok, tmp_path)
    for row, text in zip(rows, rendered, strict=True):
        assert "<|im_start|>" not in row["input"]
        assert restore_specials(tok, row["input"]) == (text, [RECONSTRUCTED])
    assert restore_specials(tok, rendered[0]) == (rendered[0], [])  # whole already: as given


def test_a_reconstructed_line_analyses_as_its_messages(tiny: ModelPair, tmp_path: Path):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    rows, rendered = verl_rows(tiny.student.tokenizer, tmp_path)
    line = {**apply_preset(rows[1], "verl"), "privileged": "Say hello."}
    analysis = analyzer.analyze(line)
    assert RECONSTRUCTED in analysis["notes"]
    assert analysis["student"]["context_text"] == rendered[1]
    given = analyzer.analyze(
        {"messages": CONVERSATIONS[1], "response": line["response"], "privileged": "Say hello."}
    )
    assert analysis["teacher"]["context_text"] == given["teacher"]["context_text"]
    assert [s["teacher_logprob"] for s in analysis["steps"]] == pytest.approx(
        [s["teacher_logprob"] for s in given["steps"]], abs=1e-5
    )


def test_a_text_that_does_not_render_back_is_still_refused(tiny: ModelPair, tmp_path: Path):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    rows, _ = verl_rows(tiny.student.tokenizer, tmp_path)
    cut = {**rows[0], "input": "Note: " + rows[0]["input"]}  # not a whole rendering any more
    assert restore_specials(tiny.student.tokenizer, cut["input"]) == (cut["input"], [])
    with pytest.raises(BadTrajectory, match="skip_special_tokens=True"):
        analyzer.prepare_line({**apply_preset(cut, "verl"), "privileged": "x"}, {}, None)
