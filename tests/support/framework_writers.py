"""Writer code copied verbatim from training frameworks, for the presets tests (tests/inputs/test_presets.py).

Copied, not imported, where the framework's module cannot be imported here: verl's
`verl/trainer/ppo/ray_trainer.py` imports ray, omegaconf, torchdata and verl's workers at module
level (installing verl pulls vLLM/ray-sized dependencies), so the static writer behind
`trainer.rollout_data_dir` is reproduced below exactly as in the verl 0.9.1 wheel
(`RayPPOTrainer._write_generations`, a @staticmethod with no other dependency than json and os).
TRL is imported for real (the tests run a GRPOTrainer step); tinker-cookbook's logtree modules
are loaded from its wheel (below, `load_tinker_logtree`).
"""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any


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
