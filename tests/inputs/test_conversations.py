"""Conversations in (#25): messages as frameworks write them (tool calls, tool results,
reasoning), several assistant turns, TRL's standard line and verl's response_mask, read into one
`Trajectory`, and each kind of bad input refused with the message and field it is about. No
tokenizer here: where the turns' tokens lie is tests/pipeline/test_contexts_turns.py."""

from __future__ import annotations

import pytest
from vrollout.errors import BadTrajectory
from vrollout.inputs.trajectories import to_trajectory
from vrollout.inputs.validation import validate
from vrollout.schema.requests import AnalyzeRequest, PedagogicalRequest

USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
ASKS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny, 21 C"}
ANSWER = {"role": "assistant", "content": "It is sunny.", "reasoning_content": "The tool said sunny."}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
AGENT = {"messages": [USER, ASKS, RESULT, ANSWER], "tools": TOOLS}


def trajectory(body: dict, model: type = AnalyzeRequest):
    return to_trajectory(validate(model, body))


def refused(body: dict, model: type = AnalyzeRequest) -> BadTrajectory:
    with pytest.raises(BadTrajectory) as caught:
        trajectory(body, model)
    return caught.value


def test_an_agent_conversation_is_read_whole_with_its_prompt_before_the_first_assistant_turn():
    traj = trajectory(AGENT)
    assert traj.format == "messages"
    assert traj.messages == [USER]  # the prompt
    assert traj.tools == TOOLS
    assert traj.final_answer == "It is sunny."  # what verdicts check
    assert traj.response_text is None and traj.has_response
    # Every message as the chat template takes it: fields not given are left out, null content is ""
    asks, result, answer = traj.conversation[1:]
    assert asks == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert result == RESULT
    assert answer == ANSWER


def test_call_arguments_may_be_an_object_as_trl_writes_them():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    traj = trajectory(
        {"messages": [USER, {"role": "assistant", "tool_calls": [call]}, {**RESULT, "tool_call_id": None}]}
    )
    assert traj.conversation[1]["tool_calls"] == [call]


def test_several_assistant_turns_make_a_conversation_and_every_one_is_kept():
    turns = [USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    traj = trajectory({"messages": [*turns, {"role": "assistant", "content": "6"}]})
    assert traj.messages == [USER] and len(traj.conversation) == 4 and traj.final_answer == "6"
    # The last turn given as `response` after the conversation so far: the same conversation
    same = trajectory({"messages": turns, "response": "6"})
    assert same.conversation == traj.conversation and same.messages == [USER]


def test_a_single_plain_answer_keeps_todays_trajectory():
    traj = trajectory({"messages": [USER, {"role": "assistant", "content": "Sunny."}]})
    assert (traj.format, traj.messages, traj.response_text) == ("messages", [USER], "Sunny.")
    assert traj.conversation is None and traj.final_answer == "Sunny."
    trl = trajectory({"prompt": [USER], "completion": [{"role": "assistant", "content": "Sunny."}]})
    assert (trl.format, trl.response_text, trl.conversation) == ("prompt_completion", "Sunny.", None)
    text = trajectory({"prompt": "hi", "response": "hello"})
    assert (text.messages, text.response_text, text.final_answer) == (
        [{"role": "user", "content": "hi"}],
        "hello",
        "hello",
    )


def test_trl_tool_calling_completion_of_several_messages_is_a_conversation():
    body = {"prompt": [USER], "completion": [ASKS, RESULT, ANSWER], "tools": TOOLS}
    traj = trajectory(body)
    assert traj.format == "prompt_completion" and traj.messages == [USER] and len(traj.conversation) == 4
    bad = refused({"prompt": [USER], "completion": [RESULT, ANSWER]})
    assert "completion[0]" in bad.message  # the tool result has no call before it, in the completion


def test_trl_standard_line_reads_the_prompt_as_the_text_the_model_saw():
    traj = trajectory({"prompt": "Q: 2+2?\nA:", "completion": " 4"})
    assert traj.format == "prompt_completion" and traj.rendered
    assert traj.messages == [{"role": "user", "content": "Q: 2+2?\nA:"}] and traj.response_text == " 4"
    assert trajectory({"prompt": "Q: 2+2?\nA:", "completion": " 4", "rendered": True}).response_text == " 4"
    assert "give the response once" in refused({"prompt": "Q", "completion": " 4", "response": "4"}).message
    assert "TRL's standard format" in refused({"prompt": [USER], "completion": " 4"}).message
    assert "TRL's conversational format" in refused({"prompt": "Q", "completion": [ANSWER]}).message


@pytest.mark.parametrize(
    "messages,field,words",
    [
        ([USER, {"role": "tool", "content": "sunny"}, ANSWER], "messages[1].role", "no tool call before it"),
        (
            [USER, ASKS, {**RESULT, "tool_call_id": "call_9"}],
            "messages[2].tool_call_id",
            "'call_9' matches no",
        ),
        (
            [USER, {"role": "assistant", "content": None}],
            "messages[1].content",
            "needs content or tool_calls",
        ),
        ([USER, {"role": "assistant"}, RESULT], "messages[1].content", "needs content or tool_calls"),
        ([{"role": "user"}, ANSWER], "messages[0].content", "content is required"),
        ([{**USER, "tool_calls": [CALL]}, ANSWER], "messages[0].tool_calls", "only an assistant message"),
    ],
)
def test_bad_conversations_name_the_turn_and_the_field(messages, field, words):
    error = refused({"messages": messages})
    assert error.details["field"] == field and words in error.message and field in error.message
    assert error.details["turn"] == int(field.split("[")[1].split("]")[0])


@pytest.mark.parametrize(
    "body,field",
    [
        ({"messages": [USER, {**ASKS, "tool_calls": [{**CALL, "function": {"name": ""}}]}]}, "name"),
        ({"messages": [USER, {**ASKS, "tool_calls": [{**CALL, "type": "code"}]}]}, "type"),
        ({"messages": [USER, {**ASKS, "tool_calls": [{**CALL, "extra": 1}]}]}, "extra"),
        ({"messages": [USER, ANSWER], "tools": [{"a": {"b": None}}] * 300}, "tools"),
    ],
)
def test_tool_calls_and_tools_are_checked_by_the_request_model(body, field):
    assert field in refused(body).message


def test_tools_nested_too_deeply_are_refused():
    deep: dict = {}
    inner = deep
    for _ in range(70):
        inner["x"] = {}
        inner = inner["x"]
    assert "nested deeper" in refused({"messages": [USER, ANSWER], "tools": [deep]}).message


def test_response_mask_goes_with_response_ids_one_value_per_token():
    traj = trajectory({"prompt_ids": [1, 2], "response_ids": [3, 4, 5], "response_mask": [1, 0, 1]})
    assert traj.response_mask == [1, 0, 1] and traj.final_answer is None
    for body, words in (
        (
            {"prompt_ids": [1], "response_ids": [3, 4], "response_mask": [1]},
            "response_mask has 1 values and response_ids 2",
        ),
        ({"prompt_ids": [1], "response_ids": [3], "response_mask": [0]}, "all 0"),
        ({"prompt_ids": [1], "response_mask": [1]}, "goes with response_ids"),
        ({"prompt": "hi", "response": "x", "response_mask": [1]}, "goes with response_ids"),
        ({"prompt_ids": [1], "response_ids": [3], "response_mask": [2]}, "at most 1"),
        ({"prompt_ids": [1], "response_ids": [3], "response_mask": [True]}, "integer"),
        ({"prompt_ids": [1], "response_ids": [3], "tools": TOOLS}, "drop tools"),
    ):
        error = refused(body)
        assert words in error.message


def test_a_conversation_sent_to_a_pedagogical_rollout_is_refused():
    error = refused({"messages": [USER, ASKS, RESULT, ANSWER]}, PedagogicalRequest)
    assert "pedagogical rollout needs a single turn" in error.message and error.details["field"] == "messages"
    # A prompt with one plain answer stays a prompt (the rollout writes its own answer)
    assert trajectory(
        {"messages": [USER, {"role": "assistant", "content": "x"}]}, PedagogicalRequest
    ).messages == [USER]


def test_an_agents_history_as_the_prompt_is_a_valid_trajectory_record():
    from pydantic import TypeAdapter
    from vrollout.schema.analysis import TrajectoryRecord

    traj = trajectory({"prompt": [USER, ASKS, RESULT], "response": "It is sunny."})
    record = {
        "format": traj.format,
        "id": None,
        "reference_answer": None,
        "score": None,
        "correct": None,
        "step": None,
        "meta": {},
        "prompt": traj.messages,  # tool calls and all, as an analysis stores it
        "rendered": False,
    }
    assert TypeAdapter(TrajectoryRecord).validate_python(record)["prompt"][1]["tool_calls"] == [CALL]


def test_a_conversation_of_too_many_messages_is_refused_naming_its_field():
    # Placing a conversation renders it up to each message: the messages are counted first
    from vrollout.inputs.conversations import MAX_MESSAGES

    turns = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}] * (MAX_MESSAGES // 2)
    error = refused({"messages": [USER, *turns, ANSWER]})
    assert error.details["field"] == "messages" and f"at most {MAX_MESSAGES} messages" in str(error)
    error = refused({"prompt": [USER], "completion": [*turns, ANSWER]})
    assert error.details["field"] == "completion" and f"at most {MAX_MESSAGES} messages" in str(error)
    assert trajectory({"messages": [USER, *turns[: MAX_MESSAGES - 2], ANSWER]}).conversation is not None


class CountedId(str):
    """A tool_call_id that counts its comparisons: the check's work, measured without a clock."""

    compared = 0
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        CountedId.compared += 1
        return str.__eq__(self, other)


def test_tool_call_ids_are_matched_without_a_scan_of_every_earlier_call():
    from vrollout.inputs.conversations import check_messages
    from vrollout.schema.requests import Message, ToolCall, ToolFunction

    messages = [Message(role="user", content="go")]
    for i in range(2000):
        call = ToolCall(id=f"call_{i}", function=ToolFunction(name="f", arguments="{}"))
        messages.append(Message(role="assistant", tool_calls=[call]))
        messages.append(
            Message.model_construct(role="tool", content="r", tool_call_id=CountedId(f"call_{i}"))
        )
    CountedId.compared = 0
    check_messages(messages, lambda i: f"messages[{i}]")
    assert CountedId.compared <= 4 * 2000  # each answer found at once, not after every call before it
