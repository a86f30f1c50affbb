"""Prompts already rendered (`rendered: true`): the same trajectory as messages and as the text its
chat template renders give the same contexts (student and teacher, with privileged info) and the
same analysis; prompts that cannot be placed exactly are refused with the reason."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from support import assert_error, tiny_settings, upload, wait_done
from support.tiny import tiny_pair
from vrollout.errors import BadTrajectory
from vrollout.models import ModelPair
from vrollout.pipeline.analyzer import Analyzer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 17*23?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 17*23?"}],
    [  # multi-turn: the privileged info goes into the last user turn only
        {"role": "user", "content": "What is 17*20?"},
        {"role": "assistant", "content": "340."},
        {"role": "user", "content": "And 17*23?"},
    ],
]
RESPONSE = "17*23 = 381."
PRIVILEGED = "17*23 = 17*20 + 17*3 = 340 + 51 = 391."
# What differs between two analyses of the same trajectory given two ways.
VARYING = {"id", "created_at", "trajectory", "notes"}


def rendered_text(pair: ModelPair, messages: list[dict[str, str]]) -> str:
    tok = pair.student.tokenizer
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def same_analyses(analyzer: Analyzer, messages: list[dict[str, str]], privileged: str | None) -> None:
    """The trajectory as messages and as its rendered text: identical contexts and analysis, but
    for `turn` (a rendered prompt numbers no messages). A history with an assistant turn is given
    as the prompt: as `messages` it would be a conversation whose every assistant turn is scored."""
    history = any(m["role"] == "assistant" for m in messages)
    as_messages = (
        {"prompt": messages, "response": RESPONSE, "privileged": privileged}
        if history
        else {"messages": [*messages, {"role": "assistant", "content": RESPONSE}], "privileged": privileged}
    )
    as_rendered = {
        "prompt": rendered_text(analyzer.pair, messages),
        "rendered": True,
        "response": RESPONSE,
        "privileged": privileged,
    }
    a, b = analyzer.prepare(as_messages).ctx, analyzer.prepare(as_rendered).ctx
    assert (b.student_ids, b.student_text) == (a.student_ids, a.student_text)
    assert (b.teacher_ids, b.teacher_text) == (a.teacher_ids, a.teacher_text)
    assert b.response_ids == a.response_ids
    if privileged:
        assert PRIVILEGED in b.teacher_text and a.teacher_ids != a.student_ids
    first, second = analyzer.analyze(as_messages), analyzer.analyze(as_rendered)
    assert second["trajectory"]["rendered"] is True and first["trajectory"]["rendered"] is False
    assert any("tokenized as it is" in note for note in second["notes"])
    assert {s["turn"] for s in first["steps"]} == {len(messages)}
    assert {s["turn"] for s in second["steps"]} == {None}
    assert [t["message_index"] for t in first["summary"]["turns"]] == [len(messages)]
    assert not second["summary"]["turns"]
    assert without_turns(first) == without_turns(second)


def without_turns(analysis: dict) -> dict:
    """An analysis but for what varies between two forms of one trajectory, and for its turns."""
    kept = {k: v for k, v in analysis.items() if k not in VARYING}
    kept["steps"] = [{k: v for k, v in step.items() if k != "turn"} for step in kept["steps"]]
    kept["summary"] = {k: v for k, v in kept["summary"].items() if k != "turns"}
    return kept


@pytest.fixture
def analyzer(tiny: ModelPair, tmp_path: Path) -> Analyzer:
    return Analyzer(tiny, tiny_settings(tmp_path))


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("privileged", [PRIVILEGED, None])
def test_rendered_equals_messages_on_tiny_model(analyzer: Analyzer, messages, privileged):
    same_analyses(analyzer, messages, privileged)


@pytest.mark.real_model
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_rendered_equals_messages_on_real_model(real_analyzer: Analyzer, messages):
    same_analyses(real_analyzer, messages, PRIVILEGED)


def stripped(pair: ModelPair, messages: list[dict[str, str]]) -> str:
    """The prompt as verl's rollout dumps store it: the rendered ids decoded without special tokens."""
    tok = pair.student.tokenizer
    ids = tok(rendered_text(pair, messages), add_special_tokens=False)["input_ids"]
    return tok.decode(ids, skip_special_tokens=True)


def test_prompt_without_special_tokens_is_refused_with_the_reason(analyzer: Analyzer):
    """Stripped and not rendered back by any conversation (text before the template's start): a
    whole stripped prompt is rendered back instead (tests/inputs/test_reconstruct.py)."""
    prompt = "Note: " + stripped(analyzer.pair, CONVERSATIONS[1])
    assert "<|im_end|>" not in prompt and "What is 17*23?" in prompt
    for privileged in (PRIVILEGED, None):  # either way it is not the text the model saw
        with pytest.raises(BadTrajectory, match="skip_special_tokens=True") as err:
            analyzer.prepare({"prompt": prompt, "rendered": True, "response": "x", "privileged": privileged})
        assert "give the prompt as messages" in str(err.value)


def test_prompt_of_another_template_takes_no_privileged_info(analyzer: Analyzer):
    line = {"prompt": "<|im_start|>user\nhi<|im_end|>\n", "rendered": True, "response": "x"}
    with pytest.raises(BadTrajectory, match="not this template's rendering"):
        analyzer.prepare({**line, "privileged": PRIVILEGED})
    ctx = analyzer.prepare(line).ctx  # without privileged info: the exact text given, with a note
    assert ctx.student_text == line["prompt"] and ctx.teacher_ids == ctx.student_ids
    assert any("used as the exact text given" in note for note in ctx.notes)


def test_untemplated_text_prompt_is_the_context_as_it_is(analyzer: Analyzer):
    """A text prompt the model saw without a template (as TRL logs one) replays as it is."""
    tok = analyzer.pair.student.tokenizer
    prompt = "Question: what is 17*23?\nAnswer:"
    ctx = analyzer.prepare({"prompt": prompt, "rendered": True, "response": " 391"}).ctx
    assert ctx.student_ids == tok(prompt, add_special_tokens=False)["input_ids"] == ctx.teacher_ids


def test_user_turn_after_the_generation_prompt_is_ambiguous(analyzer: Analyzer):
    prompt = rendered_text(analyzer.pair, CONVERSATIONS[0]) + "hm<|im_end|>\n<|im_start|>user\nok<|im_end|>\n"
    with pytest.raises(BadTrajectory, match="ambiguous"):
        analyzer.prepare({"prompt": prompt, "rendered": True, "response": "x", "privileged": PRIVILEGED})


def test_text_after_the_generation_prompt_stays_and_is_noted(analyzer: Analyzer):
    prefill = "<think>\n"
    prompt = rendered_text(analyzer.pair, CONVERSATIONS[0]) + prefill
    ctx = analyzer.prepare({"prompt": prompt, "rendered": True, "response": "x", "privileged": "391"}).ctx
    assert ctx.student_text == prompt
    assert ctx.teacher_text.endswith("391<|im_end|>\n<|im_start|>assistant\n" + prefill)
    assert any("8 characters after the generation prompt" in note for note in ctx.notes)


def test_tokenized_as_is_without_special_tokens_added(analyzer: Analyzer):
    tok = analyzer.pair.student.tokenizer
    prompt = rendered_text(analyzer.pair, CONVERSATIONS[0])
    ctx = analyzer.prepare({"prompt": prompt, "rendered": True, "response": "x"}).ctx
    assert ctx.student_ids == tok(prompt, add_special_tokens=False)["input_ids"]
    assert ctx.student_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2  # as the text holds
    assert ctx.teacher_ids == ctx.student_ids  # no privileged info: the same context


def test_no_chat_template(tmp_path: Path):
    pair = tiny_pair()
    pair.student.tokenizer.chat_template = None  # a fresh pair: the shared fixture is untouched
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    ctx = analyzer.prepare({"prompt": "plain text\n\n", "rendered": True, "response": "x"}).ctx
    assert ctx.student_text == "plain text\n\n" and ctx.teacher_ids == ctx.student_ids
    with pytest.raises(BadTrajectory, match="no chat template"):
        analyzer.prepare({"prompt": "plain text", "rendered": True, "response": "x", "privileged": "p"})


def test_teacher_template_with_text_before_the_prompt(tiny: ModelPair, tmp_path: Path):
    pair = dataclasses.replace(tiny, teacher_template="Hint: {privileged}\n\n{prompt}")
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    prompt = rendered_text(pair, CONVERSATIONS[0])
    with pytest.raises(BadTrajectory, match="must start with {prompt}"):
        analyzer.prepare({"prompt": prompt, "rendered": True, "response": "x", "privileged": "p"})
    # the text after {prompt} is placed as the normal path places it
    pair = dataclasses.replace(tiny, teacher_template="{prompt}\n(hint: {privileged})")
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    line = {"prompt": prompt, "rendered": True, "response": "x", "privileged": "p"}
    plain = {"messages": [*CONVERSATIONS[0], {"role": "assistant", "content": "x"}], "privileged": "p"}
    assert analyzer.prepare(line).ctx.teacher_ids == analyzer.prepare(plain).ctx.teacher_ids


BAD = [
    ({"messages": CONVERSATIONS[0], "rendered": True}, "needs prompt as one string"),
    ({"prompt": CONVERSATIONS[0], "rendered": True}, "needs prompt as one string"),
    ({"prompt_ids": [1, 2], "response_ids": [3], "rendered": True}, "token ids"),
    ({"prompt": "x", "response_ids": [3], "rendered": True}, "token ids"),
    ({"prompt": "x", "completion": [{"role": "assistant", "content": "y"}], "rendered": True}, "completion"),
    ({"prompt": "  ", "rendered": True}, "non-empty string"),
    ({"prompt": "x", "rendered": "yes"}, "rendered"),
]


@pytest.mark.parametrize("body,words", BAD)
def test_bad_combinations_are_clear_api_errors(tiny_client, body, words):
    assert_error(tiny_client.post("/api/analyze", json=body), 422, words)


def test_upload_lines_take_rendered(tiny_client, tiny: ModelPair):
    good = {"prompt": rendered_text(tiny, CONVERSATIONS[1]), "rendered": True, "response": RESPONSE}
    # Stripped of its special tokens and not rendered back by any conversation (text before it)
    bad = {"prompt": "Note: " + stripped(tiny, CONVERSATIONS[1]), "rendered": True, "response": RESPONSE}
    text = "\n".join(json.dumps(line) for line in (good, bad)) + "\n"
    created = upload(tiny_client, text, privileged=PRIVILEGED).json()
    assert [r["line"] for r in created["rejected"]] == [2]
    assert "skip_special_tokens=True" in created["rejected"][0]["error"]
    job = created["job"]["id"]
    assert wait_done(tiny_client, job)["done"] == 1
    direct = tiny_client.post(
        "/api/analyze",
        json={
            "messages": [*CONVERSATIONS[1], {"role": "assistant", "content": RESPONSE}],
            "privileged": PRIVILEGED,
        },
    ).json()
    (row,) = tiny_client.get(f"/api/jobs/{job}/summaries").json()
    stored = tiny_client.get(f"/api/analyses/{row['analysis_id']}").json()
    assert stored["teacher"]["context_ids"] == direct["teacher"]["context_ids"]
    assert stored["student"]["context_ids"] == direct["student"]["context_ids"]
    assert without_turns(stored)["summary"] == without_turns(direct)["summary"]


def test_teacher_with_another_chat_template_is_noted(tmp_path: Path):
    """A separate teacher sees the student's rendering (its own template cannot re-render a text)."""
    pair = tiny_pair(teacher_seed=1)
    own = copy.deepcopy(pair.teacher.tokenizer)
    own.chat_template = own.chat_template.replace("{% for", "{{ bos_token }}{% for")
    pair = dataclasses.replace(pair, teacher=dataclasses.replace(pair.teacher, tokenizer=own))
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    prompt = rendered_text(pair, CONVERSATIONS[0])
    ctx = analyzer.prepare({"prompt": prompt, "rendered": True, "response": "x", "privileged": "p"}).ctx
    assert ctx.teacher_text.startswith(prompt[:20]) and "\np<|im_end|>" in ctx.teacher_text
    assert any("the teacher's chat template differs" in note for note in ctx.notes)


def test_pedagogical_request_takes_rendered(analyzer: Analyzer):
    messages = CONVERSATIONS[1]
    plain = analyzer.prepare_pedagogical({"messages": messages, "privileged": PRIVILEGED})
    given = analyzer.prepare_pedagogical(
        {"prompt": rendered_text(analyzer.pair, messages), "rendered": True, "privileged": PRIVILEGED}
    )
    assert (given.student_ids, given.teacher_ids) == (plain.student_ids, plain.teacher_ids)
    with pytest.raises(BadTrajectory, match="needs prompt as one string"):
        analyzer.prepare_pedagogical({"messages": messages, "rendered": True})
