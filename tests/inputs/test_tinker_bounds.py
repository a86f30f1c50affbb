"""Tinker-cookbook traces are read within bounds: a trace nested thousands deep is a clear error,
not a 500 (RecursionError), and the search for each episode's conversation and reward table is
linear in the trace's size (nested sections once made it quadratic: 51 s of CPU for 4.8 MB), with
the depth and node count capped (issue #24, item 6). The traces here are built the way
tinker-cookbook's logtree writes them: `section` nodes whose first child is an `h2` header."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import assert_error, upload
from vrollout.errors import BadTrajectory
from vrollout.inputs import presets
from vrollout.inputs.presets import MAX_TRACE_DEPTH, apply_preset, tinker_rows


class Counted(dict):
    """A trace node that counts how often it is read: the reader's work, measured without a clock."""

    reads = 0

    def get(self, *args: Any) -> Any:
        Counted.reads += 1
        return super().get(*args)


def section(title: str, *body: Any, node=dict) -> dict:
    return node(tag="section", children=[node(tag="h2", children=[title]), *body])


def conversation(role: str, text: str, node=dict) -> dict:
    return node(tag="div", data={"type": "conversation", "messages": [{"role": role, "content": text}]})


def reward_table(reward: str, answer: str, node=dict) -> dict:
    rows = [
        node(tag="tr", children=[node(tag="td", children=[k]), node(tag="td", children=[v])])
        for k, v in (("reward", reward), ("reference_answer", answer), ("correct", "True"))
    ]
    return node(tag="table", children=[node(tag="tbody", children=rows)])


def episode(question: str, inside: list[dict], node=dict) -> list[dict]:
    """One episode's three sections; `inside` is placed in the Prompt section before its
    conversation, so that a depth-first search for the conversation has to cross all of it."""
    return [
        section("Prompt", *inside, conversation("user", question, node), node=node),
        section("Policy Response", conversation("assistant", "4", node), node=node),
        section("Reward", reward_table("1.0", "4", node), node=node),
    ]


def nested(levels: int, node=dict, wide: int = 20) -> dict:
    """Episodes nested `levels` deep, each inside the previous one's Prompt section after `wide`
    paragraphs (what a search from every level above crosses again)."""
    inside: list[dict] = []
    for level in range(levels):
        paragraphs = [node(tag="p", children=["text"]) for _ in range(wide)]
        inside = [node(tag="div", children=[*paragraphs, *episode(f"q{level}", inside, node)])]
    return {"title": "RL Iteration 2", "root": node(tag="body", children=inside)}


def chain(depth: int) -> dict:
    root: dict = {"tag": "div", "children": []}
    for _ in range(depth):
        root = {"tag": "div", "children": [root]}
    return {"title": "RL Iteration 0", "root": root}


def test_episodes_are_found_as_before_in_section_order():
    trace = {
        "title": "RL Iteration 7",
        "root": {"tag": "body", "children": [*episode("What is 2+2?", []), *episode("And 3+3?", [])]},
    }
    rows = tinker_rows(trace)
    assert [r["tinker_prompt"][0]["content"] for r in rows] == ["What is 2+2?", "And 3+3?"]
    line = apply_preset(rows[0], "tinker")
    assert line["completion"] == [{"role": "assistant", "content": "4"}]
    assert (line["reference_answer"], line["score"], line["correct"], line["step"]) == ("4", 1.0, True, 7)
    # Nested episodes: the outer one first, then those inside it, depth first.
    rows = tinker_rows(nested(3))
    # A Prompt section's conversation is the first one below it, depth first (the innermost here).
    assert [r["tinker_prompt"][0]["content"] for r in rows] == ["q0", "q0", "q0"]


def test_a_reward_that_is_not_a_number_is_the_line_s_error():
    trace = {"root": {"tag": "body", "children": episode("q", [])}}
    trace["root"]["children"][2] = section("Reward", reward_table("lots", "4"))
    [row] = tinker_rows(trace)
    with pytest.raises(BadTrajectory, match="column 'tinker_reward' must be a number, got 'lots'"):
        apply_preset(row, "tinker")


def test_a_deep_trace_is_refused_with_a_clear_error():
    tinker_rows(chain(MAX_TRACE_DEPTH - 2))  # within the cap: read
    with pytest.raises(BadTrajectory, match=f"nested more than {MAX_TRACE_DEPTH} nodes deep"):
        tinker_rows(chain(5000))  # was a RecursionError


def test_a_trace_over_the_node_cap_is_refused(monkeypatch):
    monkeypatch.setattr(presets, "MAX_TRACE_NODES", 1000)
    wide = {"root": {"tag": "body", "children": [{"tag": "p"} for _ in range(2000)]}}
    with pytest.raises(BadTrajectory, match="more than 1,000 nodes"):
        tinker_rows(wide)


def test_the_work_grows_linearly_with_nested_sections():
    """Each node is read a bounded number of times, however deep the episodes nest: the old
    depth-first search per section read the nodes under a Prompt section once per level above."""
    per_node = []
    for levels in (10, 30):
        trace = nested(levels, node=Counted)
        nodes = json.dumps(trace).count('"tag"')
        Counted.reads = 0
        assert len(tinker_rows(trace)) == levels
        per_node.append(Counted.reads / nodes)
    assert per_node[1] < 12 and per_node[1] < per_node[0] * 1.2, per_node


def test_an_upload_of_a_trace_5000_deep_is_a_422(tiny_client):
    depth = 5000  # written out: deeper than json.dumps goes
    body = (
        '{"title": "RL Iteration 0", "root": ' + '{"tag": "div", "children": [' * depth + "]}" * depth + "}"
    ).encode()
    assert_error(upload(tiny_client, body, name="train_logtree.json"), 422, "nested")
