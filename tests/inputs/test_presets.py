"""Presets on files written by the frameworks' own writer code (docs/formats.md, "Presets").

verl: its rollout-dump writer, copied verbatim (tests/support/framework_writers.py says why), fed
what verl's `_log_rollout_data` feeds it: prompts and responses decoded with
skip_special_tokens=True by the tokenizer that rendered them. TRL: a real GRPOTrainer step with
`log_completions=True` on the tiny model, whose completions Parquet is read back. tinker-cookbook:
its logtree library from its wheel, fed by ProblemEnv.step's own logging calls.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import tiny_settings
from support.framework_writers import load_tinker_logtree, tinker_problem_env_log, verl_write_generations
from support.tiny import tiny_pair
from vrollout.errors import BadTrajectory
from vrollout.inputs.presets import PRESETS, apply_preset, detect_preset, tinker_rows
from vrollout.inputs.sources import iter_rows
from vrollout.pipeline.analyzer import Analyzer

if TYPE_CHECKING:
    from vrollout.models import ModelPair  # imports torch: only the annotations need it

QUESTIONS = [("What is 2+2?", "4"), ("What is 3+3?", "6")]
# A chat template without special tokens, as a base model's.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def write_verl_dump(tok, directory: Path, step: int) -> Path:
    """Step `step`'s dump as verl writes it: rendered prompt ids decoded without special tokens."""
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q, _ in QUESTIONS
    ]
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [tok("The answer is 4.<|im_end|>", add_special_tokens=False)["input_ids"]] * 2
    verl_write_generations(
        inputs=tok.batch_decode(prompt_ids, skip_special_tokens=True),
        outputs=tok.batch_decode(response_ids, skip_special_tokens=True),
        gts=[answer for _, answer in QUESTIONS],
        scores=[1.0, 0.0],
        # What a dict-returning reward function (e.g. verl's math_dapo) adds, plus request ids.
        reward_extra_infos_dict={"acc": [True, False], "pred": ["4", "4"], "request_id": ["r-a", "r-b"]},
        dump_path=str(directory),
        global_steps=step,
    )
    return directory / f"{step}.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_verl_dump_maps_to_our_fields(tiny: ModelPair, tmp_path: Path):
    path = write_verl_dump(tiny.student.tokenizer, tmp_path, step=3)
    assert path.name == "3.jsonl"
    rows = read_jsonl(path)
    assert detect_preset(set(rows[0])) == "verl"
    first, second = (apply_preset(row, "verl") for row in rows)
    # The special tokens of the template are gone from the prompt: the note in meta says so.
    assert first["prompt"] == "user\nWhat is 2+2?\nassistant\n"
    assert first["rendered"] is True and "skip_special_tokens" in first["meta"]["preset_note"]
    assert first["response"] == "The answer is 4."
    assert (first["reference_answer"], first["score"], first["correct"]) == ("4", 1.0, True)
    assert (second["reference_answer"], second["score"], second["correct"]) == ("6", 0.0, False)
    assert (first["step"], first["id"]) == (3, "r-a")
    assert first["meta"]["pred"] == "4" and first["meta"]["preset"] == "verl"


def test_verl_prompt_without_its_special_tokens_is_refused_with_the_reason(tiny: ModelPair, tmp_path: Path):
    """verl's `input` lost the template's special tokens and no conversation renders back to it
    (here: text before the template's start, so it is not a whole rendering): it is not the text
    the model saw, and validation says so rather than replaying another context (the `rendered`
    checks). A whole one is rendered back (tests/inputs/test_reconstruct.py)."""
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    rows = read_jsonl(write_verl_dump(tiny.student.tokenizer, tmp_path / "dump", step=1))
    rows[0]["input"] = "Note: " + rows[0]["input"]
    with pytest.raises(BadTrajectory, match="skip_special_tokens=True"):
        analyzer.prepare_line(apply_preset(rows[0], "verl"), {}, None)


def test_verl_lines_validate_and_analyse_when_the_template_is_plain_text(tmp_path: Path):
    """With a chat template of plain text (base models in verl's GSM8K examples), decoding
    without special tokens keeps the prompt whole: the line is the text the model saw."""
    pair = tiny_pair()
    pair.student.tokenizer.chat_template = PLAIN_TEMPLATE
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    rows = read_jsonl(write_verl_dump(pair.student.tokenizer, tmp_path / "dump", step=2))
    line = apply_preset(rows[0], "verl")
    assert line["prompt"] == "User: What is 2+2?\nAssistant:"
    prep, _, _ = analyzer.prepare_line(line, {}, None)
    analysis = analyzer.run(prep, store=False)
    assert analysis["steps"] and analysis["response_text"].startswith("The answer is 4.")


def test_verl_gts_that_is_not_one_answer_stays_in_meta():
    row = {"input": "q", "output": "a", "gts": ["1", "2"], "score": 0.5, "step": 2}
    line = apply_preset(row, "verl")
    assert "reference_answer" not in line and line["meta"]["gts"] == ["1", "2"]
    assert "correct" not in line and line["score"] == 0.5


@pytest.fixture(scope="module")
def trl_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real GRPO step of TRL on the tiny model, conversational prompts, log_completions=True:
    the completions Parquet it writes."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from support.tiny import tiny_model, tiny_tokenizer
    from trl import GRPOConfig, GRPOTrainer

    def accuracy_reward(completions, solution, **kwargs):
        return [float(s in c[0]["content"]) for c, s in zip(completions, solution, strict=True)]

    out = tmp_path_factory.mktemp("grpo")
    tok = tiny_tokenizer()
    data = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": q}] for q, _ in QUESTIONS],
            "solution": [a for _, a in QUESTIONS],
        }
    )
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=1,
        logging_steps=1,
        log_completions=True,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=False,
    )
    GRPOTrainer(
        model=tiny_model(len(tok)),
        processing_class=tok,
        reward_funcs=[accuracy_reward],
        train_dataset=data,
        args=args,
    ).train()
    (table,) = sorted((out / "completions").glob("*.parquet"))
    assert table.name == "completions_00001.parquet"
    return table


@pytest.fixture(scope="module")
def trl_completions(trl_table: Path) -> list[dict]:
    """The table as a user reads it with pandas (lists come back as numpy arrays)."""
    import pandas as pd

    return pd.read_parquet(trl_table).to_dict("records")


def test_trl_table_through_the_readers(trl_table: Path, trl_completions: list[dict], tmp_path: Path):
    rows = list(iter_rows(trl_table, name=trl_table.name, settings=tiny_settings(tmp_path), preset="auto"))
    assert [number for number, _ in rows] == [1, 2]
    assert [line for _, line in rows] == [apply_preset(row, "trl") for row in trl_completions]


def test_trl_completions_map_to_our_fields(trl_completions: list[dict]):
    row = trl_completions[0]
    assert detect_preset(set(row)) == "trl"
    line = apply_preset(row, "trl")
    assert line["prompt"][-1]["role"] == "user" and line["prompt"][-1]["content"] in dict(QUESTIONS)
    assert "rendered" not in line  # messages: our tokenizer applies the template, as TRL did
    assert line["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    assert line["score"] == row["accuracy_reward"] and line["correct"] is bool(row["accuracy_reward"])
    assert line["step"] == 1 and line["meta"]["advantage"] == row["advantage"]


def test_trl_lines_validate_and_analyse(tiny: ModelPair, tmp_path: Path, trl_completions: list[dict]):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    line = apply_preset(trl_completions[0], "trl")
    if not line["completion"][0]["content"]:
        pytest.skip("the tiny policy stopped at once: nothing to replay")
    prep, _, _ = analyzer.prepare_line(line, {}, None)
    assert analyzer.run(prep, store=False)["steps"]


def test_trl_text_prompt_is_rendered_and_several_rewards_give_no_score():
    row = {
        "step": 4,
        "prompt": "2+2=",
        "completion": "4",
        "accuracy_reward": 1.0,
        "len_reward": 0.2,
        "advantage": 0.5,
    }
    line = apply_preset(row, "trl")
    assert (line["prompt"], line["rendered"], line["response"]) == ("2+2=", True, "4")
    # Two reward functions and no weights in the table: no single score, both kept.
    assert "score" not in line and line["correct"] is True
    assert line["meta"]["len_reward"] == 0.2


def test_detect_preset_is_none_when_unknown_or_ambiguous():
    assert detect_preset({"prompt", "response"}) is None
    assert detect_preset(set()) is None
    both = {"input", "output", "gts", "score", "step", "prompt", "completion", "advantage"}
    assert detect_preset(both) is None


def test_bad_rows_get_clear_errors():
    with pytest.raises(BadTrajectory, match="unknown preset 'openrlhf'"):
        apply_preset({}, "openrlhf")
    with pytest.raises(BadTrajectory, match="missing column\\(s\\) gts, score"):
        apply_preset({"input": "q", "output": "a", "step": 1}, "verl")
    with pytest.raises(BadTrajectory, match="'score' must be a number"):
        apply_preset({"input": "q", "output": "a", "gts": "1", "score": "high", "step": 1}, "verl")
    # Several messages are a tool-calling conversation now (#25): after a text prompt, which
    # TRL's tool loop never writes, the error names the prompt (tests/inputs/test_agent_presets.py).
    with pytest.raises(BadTrajectory, match="'prompt' must be messages when 'completion' calls tools"):
        two = [{"role": "assistant", "content": "x"}, {"role": "tool", "content": "y"}]
        apply_preset({"step": 1, "prompt": "p", "completion": two, "advantage": 0.0}, "trl")
    assert set(PRESETS) == {"verl", "trl", "tinker"}


@pytest.fixture(scope="module")
def tinker_trace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An RL iteration's logtree trace as tinker-cookbook writes it: its own logtree library, the
    episodes logged by ProblemEnv.step's own calls, inside the trainer's scopes (rl/train.py)."""
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = Path(cache.mkdir("tinker-cookbook-wheel")) if cache else tmp_path_factory.mktemp("tinker-wheel")
    try:
        logtree, formatters = load_tinker_logtree(cache)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"the tinker-cookbook wheel cannot be downloaded here: {exc}")
    out = tmp_path_factory.mktemp("tinker") / "iteration_000003"
    out.mkdir()
    with logtree.init_trace("RL Iteration 3", path=out / "train.html") as trace:
        for question, answer in QUESTIONS:
            with logtree.scope_header("Group Rollout"):
                convo = [{"role": "user", "content": question}]
                reply = {"role": "assistant", "content": "The answer is 4."}
                tinker_problem_env_log(logtree, formatters, convo, reply, answer, 1.0, float(answer == "4"))
    logtree.write_trace_json(trace, out / "train_logtree.json")
    return json.loads((out / "train_logtree.json").read_text())


def test_tinker_trace_maps_to_our_fields(tinker_trace: dict):
    rows = tinker_rows(tinker_trace)
    assert len(rows) == len(QUESTIONS)
    assert detect_preset(set(rows[0])) == "tinker"
    first, second = (apply_preset(row, "tinker") for row in rows)
    assert first["prompt"] == [{"role": "user", "content": "What is 2+2?"}] and "rendered" not in first
    assert first["completion"] == [{"role": "assistant", "content": "The answer is 4."}]
    assert (first["reference_answer"], first["score"], first["correct"], first["step"]) == ("4", 1.0, True, 3)
    assert (second["reference_answer"], second["score"], second["correct"]) == ("6", 0.0, False)
    assert first["meta"] == {"format_valid": True, "preset": "tinker"}


def test_tinker_lines_validate_and_analyse(tiny: ModelPair, tmp_path: Path, tinker_trace: dict):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    prep, _, _ = analyzer.prepare_line(apply_preset(tinker_rows(tinker_trace)[0], "tinker"), {}, None)
    analysis = analyzer.run(prep, store=False)
    assert analysis["steps"] and analysis["response_text"].startswith("The answer is 4.")


def test_tinker_trace_without_episodes_gives_no_rows_and_a_non_trace_is_refused():
    assert tinker_rows({"title": "RL Iteration 0", "root": {"tag": "body", "children": []}}) == []
    with pytest.raises(BadTrajectory, match="no 'root' node"):
        tinker_rows({"input": "q"})
