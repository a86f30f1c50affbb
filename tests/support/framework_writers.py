"""Writer code copied verbatim from training frameworks, for the presets tests (tests/inputs/test_presets.py).

Copied, not imported, where the framework's module cannot be imported here: verl's
`verl/trainer/ppo/ray_trainer.py` imports ray, omegaconf, torchdata and verl's workers at module
level (installing verl pulls vLLM/ray-sized dependencies), so the static writer behind
`trainer.rollout_data_dir` is reproduced below exactly as in the verl 0.9.1 wheel
(`RayPPOTrainer._write_generations`, a @staticmethod with no other dependency than json and os).
TRL is imported for real (the tests run a GRPOTrainer step); tinker-cookbook's logtree modules
are loaded from its wheel (below, `load_tinker_logtree`).

Conversations (#25, tests/inputs/test_agent_presets.py): verl's agent loop builds a multi-turn
rollout's tokens and `response_mask` with its Continuous Token builders
(`verl/utils/tokenizer/`, which need only transformers: loaded from the verl 0.9.1 wheel, below,
`load_verl_tokenizer`), driven as `ToolAgentLoop` drives them (`verl_tool_agent_rollout`), and
returns an `AgentLoopOutput` (copied below); its rollout trace records that output as
`_json_trace_metadata` makes it. TRL's tool loop runs for real in a GRPOTrainer, on a policy whose
generations are fixed (`scripted_policy`).
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from pydantic import BaseModel


# verl 0.9.1, verl/trainer/ppo/ray_trainer.py, RayPPOTrainer._write_generations (verbatim).
def _write_generations(inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path, global_steps):
    """Write generation samples as JSONL (runs in background thread)."""
    os.makedirs(dump_path, exist_ok=True)
    filename = os.path.join(dump_path, f"{global_steps}.jsonl")

    n = len(inputs)
    base_data = {
        "input": inputs,
        "output": outputs,
        "gts": gts,
        "score": scores,
        "step": [global_steps] * n,
    }

    for k, v in reward_extra_infos_dict.items():
        if len(v) == n:
            base_data[k] = v

    with open(filename, "w") as f:
        for i in range(n):
            entry = {k: v[i] for k, v in base_data.items()}
            f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    print(f"Dumped generations to {filename}")


verl_write_generations = _write_generations


# tinker-cookbook 0.6.1: the logtree library (tinker_cookbook/utils/logtree.py, stdlib only) and its
# ConversationFormatter (utils/logtree_formatters.py) are loaded from the wheel itself. The package
# cannot be installed beside this project (it pins transformers<=5.5.4 and pulls the tinker SDK),
# and logtree_formatters imports renderers/base.py (torch, PIL, tinker) for one function only:
# message_to_jsonable, provided below, copied verbatim with content_to_jsonable (text and thinking
# parts; images and tool calls are not logged by these tests).
TINKER_COOKBOOK = "tinker-cookbook==0.6.1"


def load_tinker_logtree(cache: Path) -> tuple[ModuleType, ModuleType]:
    """The logtree and logtree_formatters modules of the tinker-cookbook wheel (downloaded into
    `cache` once with pip, no dependencies): (logtree, logtree_formatters)."""
    wheels = sorted(cache.glob("tinker_cookbook-0.6.1-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", TINKER_COOKBOOK, "-d", str(cache)],
            check=True,
            timeout=300,
        )
        wheels = sorted(cache.glob("tinker_cookbook-0.6.1-*.whl"))
    source = cache / "src"
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in ("logtree.py", "logtree_formatters.py"):
            wheel.extract(f"tinker_cookbook/utils/{name}", source)
    renderers = ModuleType("tinker_cookbook.renderers.base")
    renderers.Content = Any
    renderers.Message = Any
    renderers.message_to_jsonable = message_to_jsonable
    sys.modules.setdefault("tinker_cookbook.renderers.base", renderers)
    return tuple(
        _module(source / f"tinker_cookbook/utils/{name}.py") for name in ("logtree", "logtree_formatters")
    )


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tinker_cookbook_wheel_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tinker-cookbook 0.6.1, tinker_cookbook/renderers/base.py (verbatim, but for image parts).
def content_to_jsonable(content):
    if isinstance(content, str):
        return content

    result: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "text":
            result.append({"type": "text", "text": part["text"]})
        elif part["type"] == "thinking":
            result.append({"type": "thinking", "thinking": part["thinking"]})
        else:
            raise ValueError(f"Unknown content part type: {part['type']}")
    return result


def message_to_jsonable(message):
    result: dict[str, Any] = {
        "role": message["role"],
        "content": content_to_jsonable(message["content"]),
    }
    if "trainable" in message:
        result["trainable"] = message["trainable"]
    if "tool_call_id" in message:
        result["tool_call_id"] = message["tool_call_id"]
    if "name" in message:
        result["name"] = message["name"]
    return result


def tinker_problem_env_log(
    logtree, formatters, convo, message, reference_answer, correct_format, correct_answer
):
    """What `ProblemEnv.step` (tinker-cookbook 0.6.1, tinker_cookbook/rl/problem_env.py) logs for
    one episode, its logtree calls verbatim (format_coef 0.1, its default)."""
    ConversationFormatter = formatters.ConversationFormatter  # noqa: N806
    format_coef = 0.1
    total_reward = format_coef * (correct_format - 1) + correct_answer
    # Log the attempt in a fixed structure that scales to longer content.
    with logtree.scope_header("Prompt"):
        logtree.log_formatter(ConversationFormatter(messages=convo))
    with logtree.scope_header("Policy Response"):
        logtree.log_formatter(ConversationFormatter(messages=[message]))
    with logtree.scope_header("Reward"):
        logtree.table_from_dict(
            {
                "reference_answer": reference_answer,
                "format_valid": bool(correct_format),
                "correct": bool(correct_answer),
                "format_coef": format_coef,
                "reward": f"{total_reward:.3f}",
            },
            caption="Reward components",
        )
    return total_reward


# verl 0.9.1 (the wheel): its tokenizer package, which builds an agent loop's tokens and mask.
VERL = "verl==0.9.1"


def _wheel(cache: Path, requirement: str, pattern: str) -> Path:
    """The wheel of `requirement` in `cache`, downloaded there once with pip (no dependencies)."""
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", str(cache)],
            check=True,
            timeout=300,
        )
        wheels = sorted(cache.glob(pattern))
    return wheels[0]


def load_verl_tokenizer(cache: Path) -> ModuleType:
    """`verl.utils.tokenizer.continuous_token` of the verl wheel, imported as a package of its own
    (`verl_wheel_tokenizer`): the package imports only transformers, where `verl` itself would
    pull ray, vLLM and torch extensions."""
    source = cache / "verl-src"
    with zipfile.ZipFile(_wheel(cache, VERL, "verl-0.9.1-*.whl")) as wheel:
        for name in wheel.namelist():
            if name.startswith("verl/utils/tokenizer/") and name.endswith(".py"):
                wheel.extract(name, source)
    package = source / "verl/utils/tokenizer"
    if "verl_wheel_tokenizer" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "verl_wheel_tokenizer", package / "__init__.py", submodule_search_locations=[str(package)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["verl_wheel_tokenizer"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("verl_wheel_tokenizer.continuous_token")


# verl 0.9.1, verl/experimental/agent_loop/agent_loop.py (verbatim but for `as_dict`, which only
# turns the lists into torch tensors for the batch).
class AgentLoopMetrics(BaseModel):
    """Agent loop performance metrics."""

    generate_sequences: float = 0.0
    tool_calls: float = 0.0
    compute_score: float = 0.0
    num_preempted: int = -1  # -1 means not available


class AgentLoopOutput(BaseModel):
    """Agent loop output."""

    prompt_ids: list[int]
    """Prompt token ids."""
    response_ids: list[int]
    """Response token ids including LLM generated token, tool response token."""
    response_mask: list[int]
    """Response mask, 1 for LLM generated token, 0 for tool response token."""
    response_logprobs: Optional[list[float]] = None  # noqa: UP045 (verbatim)
    """Log probabilities for the response tokens."""
    routed_experts: Optional[Any] = None  # noqa: UP045
    """Routed experts for the total tokens."""
    multi_modal_data: Optional[dict[str, Any]] = None  # noqa: UP045
    """Multi-modal data for multi-modal tools."""
    reward_score: Optional[float] = None  # noqa: UP045
    """Reward score for the trajectory."""
    num_turns: int = 0
    """Number of chat turns, including user, assistant, tool."""
    metrics: AgentLoopMetrics
    """Auxiliary performance metrics"""
    extra_fields: dict[str, Any] = {}
    """Extra fields for dynamic addition."""
    mm_processor_kwargs: Optional[dict[str, Any]] = None  # noqa: UP045
    """Processor/backend kwargs that must stay aligned across rollout and training paths."""
    mm_processor_output: Optional[list[dict[str, Any]]] = None  # noqa: UP045
    """SGLang video payload (see AgentLoopBase.build_sglang_video_payload); reused by the teacher
    (OPD) path so an SGLang teacher receives the video instead of raw frames. None otherwise."""


# verl 0.9.1, verl/utils/rollout_trace.py (verbatim): what its trackio backend records as a
# `run`'s output (`metadata["output"]`), the AgentLoopOutput's model_dump made JSON-safe.
def _json_trace_metadata(value):
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _json_trace_metadata(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_trace_metadata(v) for v in value]
    return str(value)


verl_trace_output = _json_trace_metadata


def verl_tool_agent_rollout(builder, messages, tools, turns, reward_score=None) -> AgentLoopOutput:
    """A multi-turn rollout's output as verl's ToolAgentLoop.run makes it (verl 0.9.1,
    experimental/agent_loop/tool_agent_loop.py), its Continuous Token calls as `ct_merge_*`
    (agent_loop.py) make them, with what the model generated given: `turns` is a list of
    (generated token ids, the assistant message the tool parser made of them, the tool messages
    answering it, [] after the last turn). No server, no tool execution: the rest is verl's."""
    messages = list(messages)
    prompt_ids = builder.build_initial_tokens(messages, tools=tools)  # _handle_pending_state
    response_mask: list[int] = []
    user_turns = assistant_turns = 0
    for generated, assistant, tool_messages in turns:
        assistant_turns += 1  # _handle_generating_state: ct_merge_assistant_token
        merge_result = builder.merge_assistant_tokens(prompt_ids, generated)
        response_mask, _ = builder.align_response_metadata(merge_result, response_mask, None)
        prompt_ids = merge_result.token_ids
        messages.append(assistant)
        if not tool_messages:
            break
        previous_messages = list(messages)  # _handle_processing_tools_state: ct_merge_context_msg
        messages.extend(tool_messages)
        merge_result = builder.merge_context_tokens(previous_messages, messages, prompt_ids, tools=tools)
        response_mask, _ = builder.align_response_metadata(merge_result, response_mask, None)
        prompt_ids = merge_result.token_ids
        user_turns += 1
    # Finalize output (run)
    response_ids = prompt_ids[-len(response_mask) :]
    prompt_ids = prompt_ids[: len(prompt_ids) - len(response_mask)]
    return AgentLoopOutput(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_mask=response_mask,
        reward_score=reward_score,
        num_turns=user_turns + assistant_turns + 1,
        metrics=AgentLoopMetrics(),
        extra_fields={"turn_scores": [], "tool_rewards": []},
    )


def scripted_policy(tokens: list[int], vocab_size: int):
    """A real GPT-2 whose next token at position p is tokens[p + 1], whatever it reads: its
    positions are one-hot, its token embeddings and blocks add nothing, and its head maps
    position p to that token (logit about 60 above the rest). Sampled at temperature 1 it still
    writes `tokens`: TRL's generation, tool parsing and logging run on fixed generations."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    n = len(tokens)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n,
        n_embd=n,
        n_layer=1,
        n_head=1,
        n_inner=4,
        tie_word_embeddings=False,
        resid_pdrop=0.0,  # the trainer generates in train mode: dropout would blur the script
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.transformer.wpe.weight.copy_(torch.eye(n))
        for norm in (model.transformer.ln_f, *(m for b in model.transformer.h for m in (b.ln_1, b.ln_2))):
            norm.weight.fill_(1.0)
        for position in range(n - 1):
            model.lm_head.weight[tokens[position + 1], position] = 2.0
    return model.eval()
