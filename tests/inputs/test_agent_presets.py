"""Presets of multi-turn runs (#25) on what the frameworks' own code produces.

verl: a tool-calling rollout's tokens and `response_mask` built by verl's own Continuous Token
builder (from its wheel), driven as its ToolAgentLoop drives it, returned as its AgentLoopOutput
and recorded as its rollout trace records a run's output (tests/support/framework_writers.py).
TRL: a real GRPOTrainer step with `tools=[multiply]` and `log_completions=True`, on a policy whose
generations are fixed (it calls the tool, then answers), whose completions Parquet is read back.
Both on the tiny tokenizer with Qwen2.5-Instruct's chat template (tests/support/templates).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from support import REPO, tiny_settings
from support.framework_writers import (
    load_verl_tokenizer,
    scripted_policy,
    verl_tool_agent_rollout,
    verl_trace_output,
)
from support.tiny import tiny_tokenizer
from vrollout.errors import BadTrajectory
from vrollout.inputs.presets import apply_preset, detect_preset
from vrollout.inputs.sources import iter_rows

QWEN25 = (REPO / "tests/support/templates/qwen2_5_instruct.jinja").read_text()
QUESTION = [{"role": "user", "content": "What is 3*4?"}]
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
ANSWER = "The answer is 12."
TOOL_CALLS = [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def qwen_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = QWEN25
    return tok


def schemas() -> list[dict]:
    from transformers.utils import get_json_schema

    return [get_json_schema(multiply)]


def wheel_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    return Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)


# --- verl: its agent loop's output ---------------------------------------------------------


@pytest.fixture(scope="module")
def continuous_token(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    try:
        return load_verl_tokenizer(wheel_cache(request, tmp_path_factory, "verl-wheel"))
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"the verl wheel cannot be downloaded here: {exc}")


def hermes_parse(tok, ids: list[int]) -> dict:
    """The assistant message verl makes of a generation (HermesToolParser.extract_tool_calls,
    then ToolAgentLoop._build_assistant_message): the text without its tool calls, and the calls."""
    text = tok.decode(ids)
    calls = [json.loads(m) for m in re.findall(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL)]
    message = {
        "role": "assistant",
        "content": re.sub(r"<tool_call>(.*?)</tool_call>", "", text, flags=re.DOTALL),
    }
    if calls:
        message["tool_calls"] = [{"type": "function", "function": call} for call in calls]
    return message


@pytest.fixture(scope="module")
def verl_row(continuous_token) -> dict:
    """One tool-calling rollout (call multiply, read 12, answer) as verl's trace records it."""
    tok = qwen_tokenizer()
    builder = continuous_token.QwenContinuousTokenBuilder(tok)
    first = tok(CALL + "<|im_end|>", add_special_tokens=False)["input_ids"]
    second = tok(ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    turns = [
        (first, hermes_parse(tok, first), [{"role": "tool", "content": "12"}]),
        (second, hermes_parse(tok, second), []),
    ]
    output = verl_tool_agent_rollout(builder, QUESTION, schemas(), turns, reward_score=1.0)
    return json.loads(json.dumps(verl_trace_output(output)))


def test_verl_agent_output_maps_to_a_token_level_line(verl_row: dict):
    assert detect_preset(set(verl_row)) == "verl"
    line = apply_preset(verl_row, "verl")
    assert {k: line[k] for k in ("prompt_ids", "response_ids", "response_mask")} == {
        k: verl_row[k] for k in ("prompt_ids", "response_ids", "response_mask")
    }
    assert line["score"] == 1.0
    assert line["meta"]["num_turns"] == 4 and line["meta"]["preset"] == "verl"
    assert line["meta"]["metrics"] == verl_row["metrics"]
    assert "response_logprobs" not in line["meta"] and "reward_score" not in line["meta"]


def test_verl_mask_marks_the_policys_tokens_and_the_tokens_are_the_templates(verl_row: dict):
    """What the mask means, read off verl's own output: 1 on both generations (with the
    <|im_end|> the policy wrote), 0 on the tool's turn and the template's framing around it;
    prompt and response together are the template's rendering of the whole conversation."""
    tok = qwen_tokenizer()
    line = apply_preset(verl_row, "verl")
    ids, mask = line["response_ids"], line["response_mask"]
    written = tok.decode([t for t, m in zip(ids, mask, strict=True) if m == 1])
    context = tok.decode([t for t, m in zip(ids, mask, strict=True) if m == 0])
    assert written == CALL + "<|im_end|>" + ANSWER + "<|im_end|>"
    assert (
        context
        == "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    convo = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS},
        {"role": "tool", "content": "12"},
        {"role": "assistant", "content": ANSWER},
    ]
    rendered = tok.apply_chat_template(convo, tools=schemas(), tokenize=True, return_dict=False)
    assert line["prompt_ids"] + ids == rendered[:-1]  # the template's last "\n" was never generated


def test_verl_text_dump_row_keeps_its_mapping():
    """A row of `trainer.rollout_data_dir` is still read as before (input/output/gts/score/step)."""
    line = apply_preset({"input": "q", "output": "a", "gts": "1", "score": 1.0, "step": 2}, "verl")
    assert (line["prompt"], line["response"], line["reference_answer"]) == ("q", "a", "1")


# --- TRL: its tool loop's completions ------------------------------------------------------


@pytest.fixture(scope="module")
def trl_tool_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real GRPO step with tools: the policy calls multiply(3, 4), TRL runs it and appends
    its result, the policy answers; TRL logs the completions (several messages) to Parquet."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = qwen_tokenizer()
    convo = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS},
        {"role": "tool", "name": "multiply", "content": "12"},
        {"role": "assistant", "content": ANSWER},
    ]
    script = tok.apply_chat_template(convo, tools=[multiply], tokenize=True, return_dict=False)

    def answered(completions, **kwargs):
        return [float("12" in c[-1]["content"]) for c in completions]

    out = tmp_path_factory.mktemp("grpo-tools")
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=256,
        max_steps=1,
        logging_steps=1,
        log_completions=True,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        learning_rate=0.0,
    )
    GRPOTrainer(
        model=scripted_policy(script + [tok.pad_token_id], len(tok)),
        processing_class=tok,
        reward_funcs=[answered],
        train_dataset=Dataset.from_dict({"prompt": [QUESTION]}),
        args=args,
        tools=[multiply],
    ).train()
    (table,) = sorted((out / "completions").glob("*.parquet"))
    return table


@pytest.fixture(scope="module")
def trl_tool_rows(trl_tool_table: Path) -> list[dict]:
    import pandas as pd

    return pd.read_parquet(trl_tool_table).to_dict("records")


def test_trl_tool_calling_completion_maps_to_a_conversation(trl_tool_rows: list[dict]):
    row = trl_tool_rows[0]
    assert len(row["completion"]) == 3  # what TRL wrote: call, tool result, answer
    assert detect_preset(set(row)) == "trl"
    line = apply_preset(row, "trl")
    # Parquet gave every message every key (null where absent): the nulls are gone.
    assert line["messages"] == [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS},
        {"role": "tool", "content": "12", "name": "multiply"},
        {"role": "assistant", "content": ANSWER},
    ]
    assert "prompt" not in line and "completion" not in line and "tools" not in line
    assert "tools" in line["meta"]["preset_note"]
    assert (line["score"], line["step"], line["meta"]["advantage"]) == (1.0, 1, row["advantage"])
    assert type(row["completion"][0]["tool_calls"]).__name__ == "ndarray"  # the caller's row untouched


def test_trl_tool_table_through_the_readers(trl_tool_table: Path, trl_tool_rows: list[dict], tmp_path: Path):
    """pyarrow (the readers) and pandas give the same lines."""
    rows = list(
        iter_rows(trl_tool_table, name=trl_tool_table.name, settings=tiny_settings(tmp_path), preset="trl")
    )
    assert [line for _, line in rows] == [apply_preset(row, "trl") for row in trl_tool_rows]


def test_trl_tools_column_renders_the_tokens_the_trainer_saw(trl_tool_rows: list[dict]):
    """With the tools given as a column (JSON text), the line renders, with the template, to
    exactly the tokens TRL generated from and trained on (prompt, call, tool suffix, answer)."""
    tok = qwen_tokenizer()
    row = {**trl_tool_rows[0], "tools": json.dumps(schemas())}
    line = apply_preset(row, "trl")
    assert line["tools"] == schemas() and "preset_note" not in line["meta"] and "tools" not in line["meta"]
    rendered = tok.apply_chat_template(
        line["messages"], tools=line["tools"], tokenize=True, return_dict=False
    )
    trained = tok.apply_chat_template(
        [*QUESTION, {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS}],
        tools=[multiply],
        tokenize=True,
        return_dict=False,
    )
    assert rendered[: len(trained)] == trained
    assert tok.decode(rendered[len(trained) :]).endswith(f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n")


def test_trl_one_plain_message_keeps_todays_line():
    row = {
        "step": 1,
        "prompt": QUESTION,
        "completion": [{"role": "assistant", "content": "12"}],
        "advantage": 0.0,
    }
    line = apply_preset(row, "trl")
    assert line["prompt"] == QUESTION and line["completion"] == [{"role": "assistant", "content": "12"}]


def test_trl_one_message_that_calls_a_tool_is_a_conversation():
    """A completion cut after its call (the tool-call iterations ran out) is one message."""
    call = {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS}
    line = apply_preset({"step": 1, "prompt": QUESTION, "completion": [call], "advantage": 0.0}, "trl")
    assert line["messages"] == [*QUESTION, call]


def test_parquet_arguments_of_other_tools_are_left_out():
    """In a Parquet column, each call's arguments carry every tool's argument names, null."""
    calls = [
        {"type": "function", "function": {"name": "search", "arguments": {"a": None, "b": None, "q": "x"}}}
    ]
    completion = [{"role": "assistant", "content": None, "tool_calls": calls, "name": None}]
    line = apply_preset({"step": 1, "prompt": QUESTION, "completion": completion, "advantage": 0.0}, "trl")
    assert line["messages"][-1] == {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"q": "x"}}}],
    }


@pytest.mark.parametrize(
    ("completion", "prompt", "tools", "error"),
    [
        ([], QUESTION, None, "column 'completion' has no message"),
        (
            [{"role": "assistant", "content": "x"}, {"content": "y"}],
            QUESTION,
            None,
            "message 1: must be an object",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"type": "function"}]}],
            QUESTION,
            None,
            "message 0, tool call 0",
        ),
        ([{"role": "assistant", "tool_calls": "multiply"}], QUESTION, None, "'tool_calls' must be a list"),
        (
            [
                {"role": "assistant", "tool_calls": TOOL_CALLS},
                {"role": "tool", "content": "1", "tool_call_id": 7},
            ],
            QUESTION,
            None,
            "message 1: 'tool_call_id' must be text",
        ),
        ([{"role": "assistant", "tool_calls": TOOL_CALLS}], "3*4=", None, "'prompt' must be messages"),
        (
            [{"role": "assistant", "tool_calls": TOOL_CALLS}],
            QUESTION,
            "{not json",
            "'tools' is text that is not JSON",
        ),
        ([{"role": "assistant", "tool_calls": TOOL_CALLS}], QUESTION, {"a": 1}, "'tools' must be a list"),
        (
            [{"role": "assistant", "tool_calls": TOOL_CALLS}],
            QUESTION,
            "[" * 100_000,  # nested past what the JSON reader follows: once a RecursionError
            "'tools' is text that is not JSON",
        ),
    ],
)
def test_bad_tool_calling_rows_name_the_column_and_message(completion, prompt, tools, error):
    row = {"step": 1, "prompt": prompt, "completion": completion, "advantage": 0.0}
    if tools is not None:
        row["tools"] = tools
    with pytest.raises(BadTrajectory, match=re.escape(error)):
        apply_preset(row, "trl")


def test_bad_verl_agent_rows_name_the_field():
    row = {"prompt_ids": [1], "response_ids": [2], "response_mask": [1], "num_turns": 2, "metrics": {}}
    with pytest.raises(BadTrajectory, match="'reward_score' must be a number"):
        apply_preset({**row, "reward_score": "high"}, "verl")


# --- end to end: the preset's lines analysed on the tiny model -----------------------------


@pytest.fixture(scope="module")
def qwen_analyzer(tmp_path_factory: pytest.TempPathFactory):
    from support.tiny import tiny_pair
    from vrollout.pipeline.analyzer import Analyzer

    pair = tiny_pair()
    pair.student.tokenizer.chat_template = QWEN25
    return Analyzer(pair, tiny_settings(tmp_path_factory.mktemp("agent-presets")))


def test_trl_tool_conversation_scores_the_assistant_turns_only(qwen_analyzer, trl_tool_rows: list[dict]):
    row = {**trl_tool_rows[0], "tools": json.dumps(schemas())}
    prep, _, _ = qwen_analyzer.prepare_line(apply_preset(row, "trl"), {}, None)
    analysis = qwen_analyzer.run(prep, store=False)
    turns = {step["turn"] for step in analysis["steps"] if step["scored"]}
    assert turns == {1, 3}  # the call and the answer; the tool's message (2) is context
    assert [t["message_index"] for t in analysis["summary"]["turns"]] == [1, 3]
    tool_steps = [step for step in analysis["steps"] if step["turn"] == 2]
    assert tool_steps and all(not step["scored"] for step in tool_steps)


def test_verl_agent_line_scores_the_masked_in_tokens_only(qwen_analyzer, verl_row: dict):
    line = apply_preset(verl_row, "verl")
    prep, _, _ = qwen_analyzer.prepare_line(line, {}, None)
    analysis = qwen_analyzer.run(prep, store=False)
    assert len(analysis["steps"]) == len(line["response_ids"])
    assert [int(step["scored"]) for step in analysis["steps"]] == line["response_mask"]


def test_a_conversation_gets_verls_tokens_and_mask(qwen_analyzer, verl_row: dict):
    """The same rollout given as messages: the response ids and mask this tool builds from the
    template are verl's (the contract: "as verl stores it"), but for the template's "\\n" after the
    last turn, which verl never generated (masked out, so it changes no figure)."""
    messages = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS},
        {"role": "tool", "content": "12"},
        {"role": "assistant", "content": ANSWER},
    ]
    prep, _, _ = qwen_analyzer.prepare_line({"messages": messages, "tools": schemas()}, {}, None)
    analysis = qwen_analyzer.run(prep, store=False)
    ids, mask = verl_row["response_ids"], verl_row["response_mask"]
    assert analysis["response_ids"] == [*ids, qwen_tokenizer().convert_tokens_to_ids("Ċ")]
    assert analysis["response_mask"] == [*mask, 0]


def test_vrollout_analyze_reads_both_with_from_auto(
    trl_tool_table: Path, verl_row: dict, tmp_path: Path, capsys
):
    """`vrollout analyze FILE --from auto`: TRL's table (a tools column added, as the docs say)
    and a JSONL of verl's trace outputs, each detected and analysed on a saved tiny student."""
    import pandas as pd
    from support.tiny import tiny_pair
    from vrollout.cli.commands import main

    student = tmp_path / "student"
    pair = tiny_pair()
    pair.student.tokenizer.chat_template = QWEN25
    pair.student.model.save_pretrained(student)
    pair.student.tokenizer.save_pretrained(student)
    table = pd.read_parquet(trl_tool_table)
    table["tools"] = json.dumps(schemas())
    table.to_parquet(tmp_path / "with_tools.parquet")
    (tmp_path / "agent.jsonl").write_text(json.dumps(verl_row) + "\n")
    for source, preset in (("with_tools.parquet", "trl"), ("agent.jsonl", "verl")):
        out = tmp_path / f"{source}.out.jsonl"
        argv = ["analyze", str(tmp_path / source), "--from", "auto", "--out", str(out), "--no-store"]
        code = main([*argv, "--student", str(student), "--device", "cpu", "--dtype", "float32"])
        assert code == 0, capsys.readouterr().err
        found = [json.loads(line) for line in out.read_text().splitlines()]
        assert found and all(a["trajectory"]["meta"]["preset"] == preset for a in found)
        assert all(0 in a["response_mask"] and 1 in a["response_mask"] for a in found)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"response_mask": [1, 0]}, "response_mask has 2 values and response_ids 3 tokens"),
        ({"response_mask": [1, 2, 0]}, "response_mask[1] must be at most 1, got 2"),
        ({"prompt_ids": "x"}, "prompt_ids must be a list"),
    ],
)
def test_a_bad_verl_agent_row_is_refused_naming_its_field(qwen_analyzer, change: dict, error: str):
    row = {
        "prompt_ids": [5, 6],
        "response_ids": [7, 8, 9],
        "response_mask": [1, 0, 1],
        "num_turns": 2,
        "metrics": {},
    }
    with pytest.raises(BadTrajectory, match=re.escape(error)):
        qwen_analyzer.prepare_line(apply_preset({**row, **change}, "verl"), {}, None)
