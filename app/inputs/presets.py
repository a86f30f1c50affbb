"""Presets: rows of what a training framework logs, renamed to this project's line fields.

Each preset was written from the framework's own writer code (docs/formats.md, "Presets", names
the file and version): verl's rollout dumps (`trainer.rollout_data_dir`), TRL's completions tables
(`log_completions=True`) and tinker-cookbook's logtree traces (`tinker_rows` turns a trace into
rows). `apply_preset` turns one row into a line: `prompt` (+ `rendered`), `response` (or, after a
prompt of messages, a one-message `completion`), `reference_answer`, `score`, `correct`, `step`,
`id`, and everything else in `meta`; validation happens afterwards, as for any line. This module
knows nothing about files: the readers (app/inputs/sources.py) hand it rows one at a time.

Conversations (#25): TRL's tool-calling completions (several messages: assistant with
`tool_calls`, `tool` results, assistant...) become a `messages` line, and verl's agent-loop output
(`AgentLoopOutput`, as its rollout trace records it) a token-level line with its `response_mask`.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from vrollout.errors import BadTrajectory

PRESETS = ("verl", "trl", "tinker")

# The columns that the framework's writer always emits: a row is that framework's when it has them.
VERL_COLUMNS = frozenset({"input", "output", "gts", "score", "step"})
TRL_COLUMNS = frozenset({"step", "prompt", "completion", "advantage"})
TINKER_COLUMNS = frozenset({"tinker_prompt", "tinker_response", "tinker_reward"})
# verl's agent loop: the fields `AgentLoopOutput.model_dump()` always holds (agent_loop.py), as its
# rollout trace (weave, mlflow, trackio) records each `run`'s output.
VERL_AGENT_COLUMNS = frozenset({"prompt_ids", "response_ids", "response_mask", "num_turns", "metrics"})
# Per-token or multimodal payloads of an AgentLoopOutput that are not kept in `meta`.
VERL_AGENT_DROPPED = frozenset(
    {"response_logprobs", "routed_experts", "multi_modal_data", "mm_processor_kwargs", "mm_processor_output"}
)
# The columns whose presence makes a row a framework's (a preset may have several shapes).
PRESET_SHAPES = (
    ("verl", VERL_COLUMNS),
    ("verl", VERL_AGENT_COLUMNS),
    ("trl", TRL_COLUMNS),
    ("tinker", TINKER_COLUMNS),
)

VERL_LOST = (
    "verl decodes prompts with skip_special_tokens=True: the chat template's special tokens "
    "(e.g. <|im_start|>, <|im_end|>, BOS) are missing from `input`, so it is the rendered prompt "
    "without them, not the exact text the model saw"
)
# A verl reward function that returns a dict adds its keys as columns; these mean the verdict.
VERL_CORRECT_KEYS = ("acc", "correct", "is_correct")
# TRL's built-in rewards that are a verdict (1.0 right, 0.0 wrong), trl/rewards/accuracy_rewards.py.
TRL_CORRECT_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward")
TRL_NO_TOOLS = (
    "TRL's completions table does not keep the tools' schemas: the prompt is rendered without "
    "them (a template's tool system prompt is missing) unless the row has a `tools` column"
)
# Columns of a TRL table that are not reward functions (grpo_trainer.py, `log`).
TRL_FIXED = frozenset({"step", "prompt", "completion", "advantage", "image"})


def detect_preset(columns: set[str]) -> str | None:
    """The preset whose writer's columns are all in `columns`; None when none or several match."""
    found = {name for name, needed in PRESET_SHAPES if needed <= set(columns)}
    return found.pop() if len(found) == 1 else None


def apply_preset(row: dict[str, Any], name: str) -> dict[str, Any]:
    """One row of framework `name`'s log as a line of our format (BadTrajectory names what is wrong)."""
    if name not in PRESETS:
        raise BadTrajectory(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if not isinstance(row, dict):
        raise BadTrajectory(f"a {name} row must be an object, got {type(row).__name__}")
    plain = {key: _plain(value) for key, value in row.items()}
    return {"verl": _verl, "trl": _trl, "tinker": _tinker}[name](plain)


def _require(row: dict[str, Any], columns: frozenset[str], name: str) -> None:
    missing = sorted(columns - row.keys())
    if missing:
        raise BadTrajectory(f"not a {name} row: missing column(s) {', '.join(missing)}")


def _number(value: Any, column: str) -> float | None:
    """A finite float, None for a missing or NaN value (TRL logs NaN where a reward gave None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadTrajectory(f"column {column!r} must be a number, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _step(value: Any) -> int | str | None:
    if value is None or isinstance(value, int | str) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise BadTrajectory(f"column 'step' must be an integer or a name, got {value!r}")


def _scalar_answer(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _verl(row: dict[str, Any]) -> dict[str, Any]:
    if row.keys() >= VERL_AGENT_COLUMNS:
        return _verl_agent(row)
    _require(row, VERL_COLUMNS, "verl")
    extras = {k: v for k, v in row.items() if k not in VERL_COLUMNS}
    line: dict[str, Any] = {"prompt": row["input"], "rendered": True, "response": row["output"]}
    gts = row["gts"]
    if _scalar_answer(gts):
        line["reference_answer"] = gts
    elif gts is not None:  # a list or dict of ground truths: kept whole, not guessed from
        extras["gts"] = gts
    if (score := _number(row["score"], "score")) is not None:
        line["score"] = score
    for key in VERL_CORRECT_KEYS:
        if isinstance(extras.get(key), bool | int | float) and extras[key] in (0, 1):
            line["correct"] = bool(extras.pop(key))
            break
    line["step"] = _step(row["step"])
    if isinstance(extras.get("request_id"), str):
        line["id"] = extras.pop("request_id")
    line["meta"] = {**extras, "preset": "verl", "preset_note": VERL_LOST}
    return line


def _verl_agent(row: dict[str, Any]) -> dict[str, Any]:
    """An AgentLoopOutput (verl's agent loop, single- or multi-turn) as a token-level line: the
    tokens the trainer trained on, and its mask (1: the policy's tokens, 0: tool or environment
    tokens and the template's own), as verl builds them."""
    line: dict[str, Any] = {key: row[key] for key in ("prompt_ids", "response_ids", "response_mask")}
    if (score := _number(row.get("reward_score"), "reward_score")) is not None:
        line["score"] = score
    extras = {k: v for k, v in row.items() if k not in line and k not in VERL_AGENT_DROPPED}
    extras.pop("reward_score", None)
    line["meta"] = {**extras, "preset": "verl"}
    return line


def _message_text(content: Any) -> str:
    """A message's text: TRL keeps multimodal content as parts; the images are not in the table."""
    if isinstance(content, str):
        return content
    if isinstance(_as_list(content), list):
        parts = _as_list(content)
        return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
    raise BadTrajectory(f"a message's content must be text or a list of parts, got {content!r}")


def _as_list(value: Any) -> Any:
    """numpy values as Python ones: pandas reads Parquet lists as arrays and numbers as numpy
    scalars (pyarrow's `to_pylist` gives Python values already)."""
    return value.tolist() if hasattr(value, "tolist") else value


def _plain(value: Any) -> Any:
    """A copy of `value` with numpy values as Python ones at every depth (pandas leaves a Parquet
    list of messages an array of dicts whose `tool_calls` are arrays again); the caller's row is
    left as it was. Walked with a stack, not recursion: a JSON row may be nested as deep as the
    reader allows."""
    root = [value]
    stack: list[list[Any] | dict[Any, Any]] = [root]
    while stack:
        container = stack.pop()
        for key in range(len(container)) if isinstance(container, list) else list(container):
            item = _as_list(container[key])
            if isinstance(item, list | dict):
                item = list(item) if isinstance(item, list) else dict(item)
                stack.append(item)
            container[key] = item
    return root[0]


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    if not all(isinstance(m, dict) and "role" in m for m in value):
        raise BadTrajectory(f"column {column!r} must be text or a list of messages with a role")
    return [{"role": m["role"], "content": _message_text(m.get("content", ""))} for m in value]


# The message keys of a conversation (OpenAI's shape, as TRL and verl write them).
MESSAGE_TEXT_KEYS = ("tool_call_id", "name", "reasoning_content")


def _conversation(value: Any, column: str) -> list[dict[str, Any]]:
    """Messages kept whole, tool calls and all. A key whose value is null is left out: a Parquet
    table gives every message of a column the keys of all of them (`tool_calls` on a tool message,
    `name` on an assistant one), null where a message has none."""
    if not isinstance(value, list):
        raise BadTrajectory(f"column {column!r} must be a list of messages, got {type(value).__name__}")
    return [_conversation_message(m, column, i) for i, m in enumerate(value)]


def _conversation_message(message: Any, column: str, index: int) -> dict[str, Any]:
    where = f"column {column!r}, message {index}"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadTrajectory(f"{where}: must be an object with a role")
    kept = {k: v for k, v in message.items() if v is not None}
    out: dict[str, Any] = {**kept, "role": message["role"]}
    if "content" in kept:
        out["content"] = _message_text(kept["content"])
    for key in MESSAGE_TEXT_KEYS:
        if key in kept and not isinstance(kept[key], str):
            raise BadTrajectory(f"{where}: {key!r} must be text, got {kept[key]!r}")
    if "tool_calls" in kept:
        calls = kept["tool_calls"]
        if not isinstance(calls, list):
            raise BadTrajectory(f"{where}: 'tool_calls' must be a list, got {calls!r}")
        out["tool_calls"] = [_tool_call(call, f"{where}, tool call {j}") for j, call in enumerate(calls)]
    return out


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """A call in OpenAI's shape. Null arguments are left out, as null keys of a message are: in
    a Parquet column, every call's arguments carry the keys of every tool's arguments."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadTrajectory(f"{where}: needs a 'function' with a 'name', got {call!r}")
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        arguments = {k: v for k, v in arguments.items() if v is not None}
    out = {k: v for k, v in call.items() if v is not None}
    out["function"] = {**{k: v for k, v in function.items() if v is not None}, "arguments": arguments}
    if arguments is None:
        del out["function"]["arguments"]
    return out


def _reply(line: dict[str, Any], text: str) -> None:
    """The response in the field our formats pair with the prompt's shape: `response` after a
    text prompt, a one-message `completion` after messages (TRL's prompt-completion)."""
    if isinstance(line["prompt"], list):
        line["completion"] = [{"role": "assistant", "content": text}]
    else:
        line["response"] = text


def _is_tool_calling(completion: list[Any]) -> bool:
    """Several messages, or one that calls a tool: a completion of TRL's tool loop."""
    return len(completion) > 1 or isinstance(completion[0], dict) and bool(completion[0].get("tool_calls"))


def _trl_tools(value: Any) -> list[Any]:
    """The `tools` column a user adds (TRL's table has none): a list of schemas, or its JSON text
    (which a Parquet table keeps as written; a list of schemas gets every schema's keys, null)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past what it follows
            raise BadTrajectory(f"column 'tools' is text that is not JSON: {exc}") from None
    if not isinstance(value, list):
        raise BadTrajectory(f"column 'tools' must be a list of tool schemas, got {type(value).__name__}")
    return value


def _trl_prompt(prompt: Any) -> dict[str, Any]:
    if isinstance(prompt, str):
        # A standard (not conversational) prompt: TRL generates from this text without a template.
        return {"prompt": prompt, "rendered": True}
    if isinstance(prompt, list):
        return {"prompt": _messages(prompt, "prompt")}
    raise BadTrajectory(f"column 'prompt' must be text or a list of messages, got {prompt!r}")


def _trl(row: dict[str, Any]) -> dict[str, Any]:
    _require(row, TRL_COLUMNS, "trl")
    prompt, completion = row["prompt"], row["completion"]
    notes: dict[str, str] = {}
    if isinstance(completion, list) and not completion:
        raise BadTrajectory("column 'completion' has no message")
    if isinstance(completion, list) and _is_tool_calling(completion):
        # TRL's tool loop: the completion is every message after the prompt (assistant turns
        # with tool_calls, the tools' results, the next turns): one conversation.
        if not isinstance(prompt, list):
            raise BadTrajectory("column 'prompt' must be messages when 'completion' calls tools")
        line: dict[str, Any] = {
            "messages": _conversation(prompt, "prompt") + _conversation(completion, "completion")
        }
        if row.get("tools") is not None:
            line["tools"] = _trl_tools(row["tools"])
        else:
            notes["preset_note"] = TRL_NO_TOOLS
    elif isinstance(completion, str):
        line = _trl_prompt(prompt)
        _reply(line, completion)
    elif isinstance(completion, list):
        line = _trl_prompt(prompt)
        (turn,) = _messages(completion, "completion")
        _reply(line, turn["content"])
    else:
        raise BadTrajectory(f"column 'completion' must be text or a list of messages, got {completion!r}")
    others = {k: v for k, v in row.items() if k not in TRL_FIXED and k != "tools"}
    rewards = {k: v for k, v in others.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    # The table has one column per reward function and not their weights: the sum is the
    # trainer's reward only with one function, so a score is given only then.
    if len(rewards) == 1:
        ((column, value),) = rewards.items()
        if (score := _number(value, column)) is not None:
            line["score"] = score
    for key in TRL_CORRECT_REWARDS:
        if rewards.get(key) in (0, 1):
            line["correct"] = bool(rewards[key])
            break
    line["step"] = _step(row["step"])
    meta = {**others, "advantage": row["advantage"], "preset": "trl", **notes}
    line["meta"] = {k: v for k, v in meta.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return line


MAX_TRACE_DEPTH = 100  # nodes nested in a trace: logtree's scopes nest a handful deep
MAX_TRACE_NODES = 1_000_000  # nodes in a trace: about 50 per episode at the 20,000-line job limit


def tinker_rows(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The episodes of a tinker-cookbook logtree trace (`iteration_NNNNNN/train_logtree.json`) as
    rows for the `tinker` preset: each "Prompt" section (a conversation), the "Policy Response"
    section after it and the "Reward" table after that, as `ProblemEnv.step` logs them. A trace
    with no such episode (an environment that logs otherwise) gives no rows. A trace nested
    deeper than MAX_TRACE_DEPTH or with more than MAX_TRACE_NODES nodes is refused; the work
    is linear in its size (each node visited a bounded number of times, no recursion)."""
    if not isinstance(trace, dict) or not isinstance(trace.get("root"), dict):
        raise BadTrajectory("not a tinker-cookbook logtree trace: no 'root' node")
    title = str(trace.get("title", ""))
    iteration = title.rsplit(" ", 1)[-1]  # "RL Iteration 3" (rl/train.py)
    return _Trace(trace["root"]).episodes(int(iteration) if iteration.isdigit() else None)


def _kids(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children")
    return [c for c in children if isinstance(c, dict)] if isinstance(children, list) else []


def _text(node: dict[str, Any]) -> str:
    children = node.get("children")
    return (
        html.unescape("".join(c for c in children if isinstance(c, str)))
        if isinstance(children, list)
        else ""
    )


def _header(node: dict[str, Any]) -> str | None:
    """The title of a logtree section (a `section` whose first child is its `hN` header)."""
    children = node.get("children")
    if node.get("tag") != "section" or not isinstance(children, list) or not children:
        return None
    first = children[0]
    if isinstance(first, dict) and str(first.get("tag", "")).startswith("h"):
        return _text(first)
    return None


def _is_conversation(node: dict[str, Any]) -> bool:
    return isinstance(node.get("data"), dict) and node["data"].get("type") == "conversation"


class _Trace:
    """A trace's nodes, walked once: `first[kind][id(node)]`, the first node of each kind under
    a node (itself included, depth first), is found bottom-up, so a section's conversation or
    table is looked up, never searched for again (nested sections once made the search quadratic)."""

    KINDS = {
        "conversation": _is_conversation,
        "table": lambda n: n.get("tag") == "table",
        "tbody": lambda n: n.get("tag") == "tbody",
    }

    def __init__(self, root: dict[str, Any]) -> None:
        self.order: list[dict[str, Any]] = []  # depth-first pre-order; keeps every id() alive
        stack = [(root, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_TRACE_DEPTH:
                raise BadTrajectory(
                    f"the logtree trace is nested more than {MAX_TRACE_DEPTH} nodes deep: "
                    "not a tinker-cookbook trace"
                )
            self.order.append(node)
            if len(self.order) > MAX_TRACE_NODES:
                raise BadTrajectory(f"the logtree trace has more than {MAX_TRACE_NODES:,} nodes")
            stack.extend((kid, depth + 1) for kid in reversed(_kids(node)))
        self.first: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in self.KINDS}
        for node in reversed(self.order):  # children before their parent
            kids = _kids(node)
            for kind, match in self.KINDS.items():
                found = self.first[kind]  # only nodes with a match below them: most have none
                here = node if match(node) else next((found[id(k)] for k in kids if id(k) in found), None)
                if here is not None:
                    found[id(node)] = here
        self.cells: dict[int, dict[str, str]] = {}
        self.messages: dict[int, Any] = {}

    def conversation(self, section: dict[str, Any]) -> Any:
        found = self.first["conversation"].get(id(section))
        if found is None:
            return []
        if id(found) not in self.messages:
            messages = found["data"].get("messages", [])
            self.messages[id(found)] = list(messages) if isinstance(messages, list) else messages
        return self.messages[id(found)]

    def table(self, section: dict[str, Any]) -> dict[str, str]:
        """A logtree key/value table (`table_from_dict`) as a dict of its cells' text."""
        table = self.first["table"].get(id(section))
        body = self.first["tbody"].get(id(table)) if table is not None else None
        if body is None:
            return {}
        if id(body) not in self.cells:
            cells: dict[str, str] = {}
            for tr in _kids(body):
                texts = [_text(td) for td in _kids(tr)]
                if len(texts) == 2:
                    cells[texts[0]] = texts[1]
            self.cells[id(body)] = cells
        return self.cells[id(body)]

    def episodes(self, iteration: int | None) -> list[dict[str, Any]]:
        """The rows, in the order of their sections' parents, depth first."""
        rows: list[dict[str, Any]] = []
        for node in self.order:
            children = _kids(node)
            titles = [_header(c) for c in children]
            for i, title in enumerate(titles):
                if title == "Prompt" and titles[i + 1 : i + 3] == ["Policy Response", "Reward"]:
                    rows.append(self._row(children[i : i + 3], iteration))
        return rows

    def _row(self, sections: list[dict[str, Any]], iteration: int | None) -> dict[str, Any]:
        prompt, response, reward_section = sections
        reply = self.conversation(response)
        reward = self.table(reward_section)
        first = reply[0] if isinstance(reply, list) and reply else None
        row: dict[str, Any] = {
            "tinker_prompt": self.conversation(prompt),
            "tinker_response": _message_text(first.get("content", "")) if isinstance(first, dict) else "",
            "tinker_reward": _reward(reward["reward"]) if "reward" in reward else None,
        }
        if "reference_answer" in reward:
            row["reference_answer"] = reward["reference_answer"]
        for key in ("correct", "format_valid"):
            if reward.get(key) in ("True", "False"):
                row[key] = reward[key] == "True"
        if iteration is not None:
            row["iteration"] = iteration
        return row


def _reward(text: str) -> float | str:
    """The reward cell as a number; text that is not one stays text (the line's error says so)."""
    try:
        return float(text)
    except ValueError:
        return text


def _tinker(row: dict[str, Any]) -> dict[str, Any]:
    _require(row, TINKER_COLUMNS, "tinker")
    line: dict[str, Any] = {"prompt": _messages(row["tinker_prompt"], "tinker_prompt")}
    if not isinstance(row["tinker_response"], str):
        raise BadTrajectory(f"column 'tinker_response' must be text, got {row['tinker_response']!r}")
    _reply(line, row["tinker_response"])
    extras = {k: v for k, v in row.items() if k not in TINKER_COLUMNS}
    if _scalar_answer(extras.get("reference_answer")):
        line["reference_answer"] = extras.pop("reference_answer")
    if (score := _number(row["tinker_reward"], "tinker_reward")) is not None:
        line["score"] = score
    if isinstance(extras.get("correct"), bool):
        line["correct"] = extras.pop("correct")
    if "iteration" in extras:
        line["step"] = _step(extras.pop("iteration"))
    line["meta"] = {**extras, "preset": "tinker"}
    return line
