"""A conversation placed token by token (#25): the prompt is everything before the first assistant
turn, the response every token after it, and the ids are exactly those of the student's template
rendering the whole conversation. The mask is 1 on each assistant turn up to its end-of-turn
token, and each token knows its message. The tiny tokenizer with its ChatML template, and with
Qwen2.5's and Qwen3's templates (tests/support/templates), offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.errors import BadTrajectory, TooLong
from vrollout.inputs.trajectories import to_trajectory
from vrollout.inputs.validation import validate
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.contexts import Contexts, build_contexts
from vrollout.schema.requests import AnalyzeRequest

TEMPLATES = Path(__file__).resolve().parents[1] / "support" / "templates"
USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}
ASKS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny, 21 C"}
ANSWER = {"role": "assistant", "content": "It is sunny."}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def chatml():
    return tiny_pair()  # the tiny tokenizer's own ChatML template (renders no tool calls)


def pair_with(template: str):
    pair = tiny_pair()
    pair.student.tokenizer.chat_template = (TEMPLATES / template).read_text()
    return pair


@pytest.fixture(scope="module")
def qwen25():
    return pair_with("qwen2_5_instruct.jinja")


@pytest.fixture(scope="module")
def qwen3():
    return pair_with("qwen3.jinja")


def contexts(pair, body: dict) -> Contexts:
    return build_contexts(to_trajectory(validate(AnalyzeRequest, body)), pair, 4096, 4096)


def encode(pair, text: str) -> list[int]:
    return pair.student.tokenizer(text, add_special_tokens=False)["input_ids"]


def whole(pair, conversation: list[dict], **kwargs) -> str:
    messages = [{k: v for k, v in m.items() if v is not None} for m in conversation]
    return pair.student.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def by_turn(pair, ctx: Contexts) -> dict[int, tuple[str, str]]:
    """Each message index: (its student text, its context text), decoded from the response."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for token, scored, turn in zip(ctx.response_ids, ctx.response_mask, ctx.turns, strict=True):
        out.setdefault(turn, ([], []))[0 if scored else 1].append(token)
    decode = pair.student.tokenizer.decode
    return {turn: (decode(mine), decode(context)) for turn, (mine, context) in out.items()}


def test_every_turn_of_a_chat_is_placed_as_the_template_renders_the_whole(chatml):
    conversation = [
        USER,
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And tomorrow?"},
        ANSWER,
    ]
    ctx = contexts(chatml, {"messages": conversation})
    assert ctx.student_ids + ctx.response_ids == encode(chatml, whole(chatml, conversation))
    assert ctx.student_ids == encode(chatml, whole(chatml, [USER], add_generation_prompt=True))
    assert by_turn(chatml, ctx) == {
        1: ("Sunny.<|im_end|>", "\n"),  # the trailing newline is the template's, not the student's
        2: ("", "<|im_start|>user\nAnd tomorrow?<|im_end|>\n"),
        3: ("It is sunny.<|im_end|>", "<|im_start|>assistant\n\n"),  # its header is context
    }
    assert len(ctx.response_mask) == len(ctx.turns) == len(ctx.response_ids)
    assert ctx.retokenized is False and "2 assistant turns" in ctx.notes[0]


def test_tool_calls_are_placed_with_qwen25s_template(qwen25):
    conversation = [USER, ASKS, RESULT, ANSWER]
    ctx = contexts(qwen25, {"messages": conversation, "tools": TOOLS})
    rendered = whole(qwen25, conversation, tools=TOOLS)
    assert ctx.student_ids + ctx.response_ids == encode(qwen25, rendered)
    assert "get_weather" in ctx.student_text and "# Tools" in ctx.student_text  # the tools, in the prompt
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert by_turn(qwen25, ctx) == {
        1: (call, "\n"),
        2: ("", "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>\n"),
        3: ("It is sunny.<|im_end|>", "<|im_start|>assistant\n\n"),
    }
    # The same conversation as TRL's tool-calling completion: the same ids and mask
    trl = contexts(qwen25, {"prompt": [USER], "completion": [ASKS, RESULT, ANSWER], "tools": TOOLS})
    assert (trl.student_ids, trl.response_ids, trl.response_mask) == (
        ctx.student_ids,
        ctx.response_ids,
        ctx.response_mask,
    )


def test_a_template_that_drops_tool_calls_or_tools_is_refused(chatml):
    with pytest.raises(BadTrajectory) as caught:
        contexts(chatml, {"messages": [USER, ASKS, RESULT, ANSWER]})
    field = "messages[1].tool_calls[0].function.name"
    assert caught.value.details["field"] == field and "drops this tool call" in caught.value.message
    with pytest.raises(BadTrajectory, match=r"tools\[0\]: the student's chat template does not render"):
        contexts(chatml, {"messages": [USER, ANSWER], "tools": TOOLS})
    # The same for a prompt's tool calls (an agent's history given as the prompt)
    with pytest.raises(BadTrajectory) as caught:
        contexts(chatml, {"prompt": [USER, ASKS, RESULT], "response": "It is sunny."})
    assert caught.value.details["field"] == "prompt[1].tool_calls[0].function.name"
    # Reasoning the template does not render is dropped too: the model wrote it
    with pytest.raises(BadTrajectory) as caught:
        contexts(chatml, {"messages": [USER, {**ANSWER, "reasoning_content": "Look outside."}]})
    assert caught.value.details["field"] == "messages[1].reasoning_content"


def test_qwen3_reasoning_kept_across_tool_turns_is_placed(qwen3):
    thought = {**ASKS, "reasoning_content": "I should look it up."}
    final = {**ANSWER, "reasoning_content": "The tool says sunny."}
    conversation = [USER, thought, RESULT, final]
    ctx = contexts(qwen3, {"messages": conversation, "tools": TOOLS})
    assert ctx.student_ids + ctx.response_ids == encode(qwen3, whole(qwen3, conversation, tools=TOOLS))
    turns = by_turn(qwen3, ctx)
    assert turns[1][0].startswith("<think>\nI should look it up.\n</think>\n\n<tool_call>")
    assert turns[3][0] == "<think>\nThe tool says sunny.\n</think>\n\nIt is sunny.<|im_end|>"


def test_qwen3_reasoning_dropped_after_a_later_user_turn_cannot_be_placed(qwen3):
    earlier = {"role": "assistant", "content": "Sunny.", "reasoning_content": "Look outside."}
    conversation = [USER, earlier, {"role": "user", "content": "And tomorrow?"}, ANSWER]
    with pytest.raises(BadTrajectory) as caught:
        contexts(qwen3, {"messages": conversation})
    assert (
        caught.value.details["field"] == "messages[1]" and "cannot be placed exactly" in caught.value.message
    )


def test_a_single_turn_keeps_todays_ids_with_a_full_mask_and_its_turn(chatml):
    ctx = contexts(chatml, {"messages": [USER, ANSWER]})
    assert ctx.student_ids == encode(chatml, whole(chatml, [USER], add_generation_prompt=True))
    assert ctx.response_ids == encode(chatml, "It is sunny.") and ctx.retokenized
    assert ctx.response_mask == [1] * len(ctx.response_ids) and ctx.turns == [1] * len(ctx.response_ids)
    two = contexts(
        chatml, {"prompt": [{"role": "system", "content": "Be brief."}, USER], "response": "Sunny."}
    )
    assert set(two.turns) == {2}
    assert set(contexts(chatml, {"prompt": "hi", "response": "hello"}).turns) == {1}
    to_generate = contexts(chatml, {"prompt": "hi"})
    assert to_generate.response_mask is None and to_generate.turns is None  # not known yet
    generated = to_generate.generated([70, 71])
    assert (generated.response_ids, generated.response_mask, generated.turns) == ([70, 71], [1, 1], [1, 1])
    assert contexts(chatml, {"prompt_ids": [5]}).generated([70]).turns is None  # token level: unknown


def test_tools_of_a_single_turn_go_to_the_template(qwen25):
    ctx = contexts(qwen25, {"messages": [USER, ANSWER], "tools": TOOLS})
    assert ctx.student_text == whole(qwen25, [USER], tools=TOOLS, add_generation_prompt=True)
    # An agent's history as the prompt (TRL), the answer as text: a single response
    history = contexts(qwen25, {"prompt": [USER, ASKS, RESULT], "response": "It is sunny.", "tools": TOOLS})
    assert history.student_text == whole(
        qwen25, [USER, ASKS, RESULT], tools=TOOLS, add_generation_prompt=True
    )
    assert set(history.turns) == {3} and history.retokenized


def test_token_level_lines_keep_their_mask_and_have_no_turns(chatml):
    ctx = contexts(chatml, {"prompt_ids": [5, 6], "response_ids": [7, 8, 9], "response_mask": [1, 0, 1]})
    assert (ctx.response_mask, ctx.turns) == ([1, 0, 1], None)
    assert contexts(chatml, {"prompt_ids": [5], "response_ids": [7, 8]}).response_mask == [1, 1]


def test_trls_standard_line_is_the_text_the_model_saw(chatml):
    ctx = contexts(chatml, {"prompt": "Q: 2+2?\nA:", "completion": " 4"})
    assert ctx.student_ids == encode(chatml, "Q: 2+2?\nA:") and ctx.response_ids == encode(chatml, " 4")
    assert ctx.student_text == "Q: 2+2?\nA:"  # no chat template applied


def test_a_conversation_over_the_response_limit_is_refused(chatml):
    conversation = [
        USER,
        {"role": "assistant", "content": "x " * 50},
        {"role": "user", "content": "more"},
        ANSWER,
    ]
    with pytest.raises(TooLong, match="the response has .* over the limit of 40"):
        build_contexts(to_trajectory(validate(AnalyzeRequest, {"messages": conversation})), chatml, 4096, 40)


def test_a_conversation_far_over_the_response_limit_is_refused_before_its_turns_are_rendered():
    # Each turn is placed by rendering the conversation up to it (work that grows with the square
    # of the messages): the whole is measured against the limits first, rendered twice only.
    pair = tiny_pair()
    renders = []
    template = pair.student.tokenizer.apply_chat_template
    pair.student.tokenizer.apply_chat_template = lambda *a, **k: renders.append(1) or template(*a, **k)
    conversation = [USER]
    for _ in range(300):
        conversation += [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    conversation.append(ANSWER)
    traj = to_trajectory(validate(AnalyzeRequest, {"messages": conversation}))
    with pytest.raises(TooLong, match="response"):
        build_contexts(traj, pair, 4096, 100)
    assert len(renders) == 2  # the whole conversation, and its prompt


def test_the_analyzer_prepares_a_conversation_and_refuses_it_for_pedagogical_rollouts(qwen25, tmp_path):
    analyzer = Analyzer(qwen25, tiny_settings(tmp_path))
    prepared = analyzer.prepare({"messages": [USER, ASKS, RESULT, ANSWER], "tools": TOOLS})
    assert sum(prepared.ctx.response_mask) < len(prepared.ctx.response_ids)
    assert prepared.traj.final_answer == "It is sunny."
    with pytest.raises(BadTrajectory, match="pedagogical rollout needs a single turn"):
        analyzer.prepare_pedagogical({"messages": [USER, ASKS, RESULT, ANSWER]})


def test_a_files_bad_conversations_are_errors_of_their_lines_only(qwen25, tmp_path):
    analyzer = Analyzer(qwen25, tiny_settings(tmp_path))
    lines = [
        (1, {"messages": [USER, ASKS, RESULT, ANSWER], "tools": TOOLS}),
        (2, {"messages": [USER, ASKS, {**RESULT, "tool_call_id": "call_9"}, ANSWER]}),
        (3, {"prompt_ids": [5, 6], "response_ids": [7, 8], "response_mask": [1]}),
    ]
    prepared, failed = analyzer.prepare_lines(lines, {}, None, {})
    assert [number for number, _ in prepared] == [1]
    assert [(number, error.details["field"]) for number, error in failed] == [
        (2, "messages[2].tool_call_id"),
        (3, "response_mask"),
    ]


def test_a_conversation_needs_a_teacher_with_the_students_tokenizer():
    from support.cross import cross_pair

    pair = cross_pair()
    with pytest.raises(BadTrajectory, match="the teacher has another tokenizer"):
        contexts(
            pair,
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": "Sunny."},
                    {"role": "user", "content": "Sure?"},
                    ANSWER,
                ]
            },
        )


@pytest.mark.real_model
def test_the_default_models_tokenizer_places_turns_as_its_templates_render_them():
    """SmolLM2's own template (a plain conversation) and Qwen2.5's on SmolLM2's tokenizer (tool
    calls): the ids of every turn are those of the whole rendering."""
    from support import REAL_CACHE
    from transformers import AutoTokenizer
    from vrollout.models import default_model_folder

    pair = tiny_pair()
    pair.student.tokenizer = pair.teacher.tokenizer = AutoTokenizer.from_pretrained(
        default_model_folder(REAL_CACHE)
    )
    plain = [USER, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Sure?"}, ANSWER]
    ctx = contexts(pair, {"messages": plain})
    assert ctx.student_ids + ctx.response_ids == encode(pair, whole(pair, plain))
    assert "You are a helpful AI assistant named SmolLM" in ctx.student_text  # its own template
    assert by_turn(pair, ctx)[3] == ("It is sunny.<|im_end|>", "<|im_start|>assistant\n\n")
    pair.student.tokenizer.chat_template = (TEMPLATES / "qwen2_5_instruct.jinja").read_text()
    agent = [USER, ASKS, RESULT, ANSWER]
    ctx = contexts(pair, {"messages": agent, "tools": TOOLS})
    assert ctx.student_ids + ctx.response_ids == encode(pair, whole(pair, agent, tools=TOOLS))
    assert by_turn(pair, ctx)[1][0].endswith("</tool_call><|im_end|>")


def test_call_arguments_nested_past_what_json_reads_are_kept_as_the_text_given(qwen25):
    # A client's arguments string of thousands of nested arrays: json.loads gives up with a
    # RecursionError (once a 500); such arguments are a string that is no JSON object, found in
    # the rendering as given.
    deep = "[" * 3000
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": deep}}
    asks = {"role": "assistant", "content": None, "tool_calls": [call]}
    ctx = contexts(qwen25, {"messages": [USER, asks, RESULT, ANSWER], "tools": TOOLS})
    assert sum(ctx.response_mask) > 3000 and set(ctx.turns) == {1, 2, 3}


def test_a_prompt_the_students_template_refuses_is_an_error_naming_the_field():
    # Gemma's and Mistral's templates raise on what they do not take (a system message, roles
    # that do not alternate): the template's own words, as a bad line, not a server error
    pair = tiny_pair()
    pair.student.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
        "supported') }}{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    system = {"role": "system", "content": "Be brief."}
    for body, field in (
        ({"messages": [system, USER, ANSWER]}, "messages"),
        ({"prompt": [system, USER], "completion": [ANSWER]}, "prompt"),
    ):
        with pytest.raises(BadTrajectory, match="System role not supported") as caught:
            contexts(pair, body)
        assert caught.value.details["field"] == field


def test_a_last_turn_given_as_response_is_named_response_in_errors():
    # The conversation so far as messages and its last turn as `response`: an error about that
    # turn names the field the user wrote it in, not a messages index past the end
    pair = tiny_pair()
    pair.student.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('no boom') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    turns = [USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    with pytest.raises(BadTrajectory, match="no boom") as caught:
        contexts(pair, {"messages": turns, "response": "boom"})
    assert caught.value.details["field"] == "response" and str(caught.value).startswith("response:")
    with pytest.raises(BadTrajectory, match="no boom") as caught:
        contexts(pair, {"messages": [*turns, {"role": "assistant", "content": "boom"}]})
    assert caught.value.details["field"] == "messages[3]"
