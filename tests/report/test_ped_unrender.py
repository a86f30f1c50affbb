"""Pedagogical rollouts of prompts given rendered or as token ids: their records and exported
rows give the prompt as the chat messages the student's template renders back to exactly the
student's context, as the same line given as messages does, so a trainer applying the template
(TRL's SFTTrainer) sees exactly that context, not a twice-templated one. A prompt that no
messages render to is kept as its exact text (`prompt_text`, `prompt` null) and counted."""

from __future__ import annotations

import argparse
import io
import json

import pyarrow.parquet as pq
import pytest
from support import tiny_settings, upload, wait_done
from support.tiny import tiny_tokenizer
from vrollout.cli.pedagogical import pedagogical_file
from vrollout.jobs.pedagogical import pedagogical_options, prepare_line, run_line
from vrollout.pipeline.analyzer import Analyzer

PROMPT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 17*20?"},
    {"role": "assistant", "content": "340."},
    {"role": "user", "content": "And 17*23?"},
]
RESPONSE = "hello the world"
OPTIONS = {"threshold": 0.2, "max_new_tokens": 6, "temperature": 0.7, "seed": 3}


def lines() -> list[dict]:
    """One prompt given four ways (messages, rendered text, token ids, and a rendered text with a
    prefilled answer start that no messages render to) and an untemplated text prompt."""
    tok = tiny_tokenizer()  # the tiny pair's student tokenizer
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    response_ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    common = {"reference_answer": "world"}
    return [
        {"id": "messages", "prompt": PROMPT, "response": RESPONSE, **common},
        {"id": "rendered", "prompt": text, "rendered": True, "response": RESPONSE, **common},
        {"id": "ids", "prompt_ids": ids, "response_ids": response_ids, **common},
        {"id": "prefilled", "prompt": text + "So", "rendered": True, "response": RESPONSE, **common},
        {"id": "plain", "prompt": "17*23 =", "rendered": True, "response": RESPONSE, **common},
    ]


def near(value):
    """`value` with its floats compared within float32 rounding (the job batches the rollouts)."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-5)
    if isinstance(value, dict):
        return {k: near(v) for k, v in value.items()}
    if isinstance(value, list):
        return [near(v) for v in value]
    return value


def run_job(client) -> str:
    body = "\n".join(json.dumps(line) for line in lines())
    r = upload(client, body, mode="pedagogical", **OPTIONS)
    assert r.status_code == 201, r.text
    job = wait_done(client, r.json()["job"]["id"], timeout=300)
    assert (job["state"], job["done"], job["failed"]) == ("done", 5, 0), job
    return job["id"]


def exported(client, job_id: str, **query) -> list[dict]:
    r = client.get(f"/api/jobs/{job_id}/rollouts", params={"include": "all", **query})
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.text.splitlines()]


def test_rendered_and_ids_lines_export_the_messages_line_row(tiny_client):
    job_id = run_job(tiny_client)
    records = {r["id"]: r for r in tiny_client.app.state.jobs.rollouts(job_id)}
    for name in ("messages", "rendered", "ids"):
        assert (records[name]["prompt"], records[name]["prompt_text"]) == (PROMPT, None), name
    rows = {row["id"]: row for row in exported(tiny_client, job_id)}
    same = [{k: v for k, v in rows[name].items() if k != "id"} for name in ("messages", "rendered", "ids")]
    assert same[1] == near(same[0]) and same[2] == near(same[0]) and same[0]["prompt"] == PROMPT
    # No messages render to these: their exact text instead, never one user message holding it.
    text = lines()[1]["prompt"]
    for name, exact in (("prefilled", text + "So"), ("plain", "17*23 =")):
        assert (records[name]["prompt"], records[name]["prompt_text"]) == (None, exact)
        assert (rows[name]["prompt"], rows[name]["prompt_text"]) == (None, exact)
    messages = {row["id"]: row for row in exported(tiny_client, job_id, style="messages")}
    assert messages["rendered"]["messages"] == PROMPT + rows["rendered"]["completion"]
    assert messages["plain"]["messages"] is None and messages["plain"]["prompt_text"] == "17*23 ="
    table = pq.read_table(
        io.BytesIO(tiny_client.get(f"/api/jobs/{job_id}/rollouts?format=parquet&include=all").content)
    )
    assert table.column("prompt_text").to_pylist() == [None, None, None, text + "So", "17*23 ="]
    assert table.column("prompt").to_pylist()[1] == PROMPT and table.column("prompt").to_pylist()[4] is None
    summary = tiny_client.get(f"/api/jobs/{job_id}/comparison").json()["summary"]
    assert summary["prompts_as_text"] == 2


def test_trl_tokenizes_the_exported_rendered_prompt_to_the_students_context(tiny_client, tmp_path):
    """For the line given rendered, the prompt TRL's SFTTrainer tokenizes from the exported row
    is exactly the student's context ids (one template, not two); the old export (the rendered
    text as one user message) is not."""
    import trl
    from datasets import Dataset
    from support.tiny import tiny_model

    job_id = run_job(tiny_client)
    rows = [r for r in exported(tiny_client, job_id) if r["prompt"] is not None]
    assert [r["id"] for r in rows] == ["messages", "rendered", "ids"]
    record = next(r for r in tiny_client.app.state.jobs.rollouts(job_id) if r["id"] == "rendered")
    analysis = tiny_client.get(f"/api/analyses/{record['student']['analysis_id']}").json()
    context_ids = analysis["student"]["context_ids"]
    twice = {**rows[1], "prompt": [{"role": "user", "content": lines()[1]["prompt"]}], "prompt_text": "x"}
    tok = tiny_tokenizer()
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to="none",
        use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    data = Dataset.from_list([*rows, twice])
    trainer = trl.SFTTrainer(model=tiny_model(len(tok)), args=args, train_dataset=data, processing_class=tok)
    prompts = []
    for example in trainer.train_dataset:
        prompt_len = next(i for i, label in enumerate(example["labels"]) if label != -100)
        prompts.append(example["input_ids"][:prompt_len])
    assert prompts[0] == prompts[1] == prompts[2] == context_ids
    assert prompts[3] != context_ids and len(prompts[3]) > len(context_ids)  # templated twice
    trainer.train()


def test_cli_says_how_many_prompts_are_kept_as_text(tiny, tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps(line) for line in lines()) + "\n")
    settings = tiny_settings(tmp_path)
    values = dict(file=str(src), out=str(tmp_path / "out"), split=None, map=None, preset=None)
    values |= dict(privileged=None, threshold=0.2, max_rank=None, temperature=None, top_p=None, seed=None)
    values |= dict(max_new_tokens=5, sweep=None, top_k=None, include="all", no_store=True)
    code = pedagogical_file(argparse.Namespace(**values), settings, Analyzer(tiny, settings))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 prompts (given rendered or as token ids) could not be given as chat messages" in err
    out = [json.loads(x) for x in (tmp_path / "out" / "rollouts.jsonl").read_text().splitlines()]
    assert [r["prompt"] is None for r in out] == [False, False, False, True, True]
    assert out[1]["prompt"] == PROMPT and out[3]["prompt_text"].endswith("So")


def test_no_note_when_every_prompt_is_messages(tiny, tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps(line) for line in lines()[:3]) + "\n")
    settings = tiny_settings(tmp_path)
    values = dict(file=str(src), out=str(tmp_path / "out"), split=None, map=None, preset=None)
    values |= dict(privileged=None, threshold=0.2, max_rank=None, temperature=None, top_p=None, seed=None)
    values |= dict(max_new_tokens=5, sweep=None, top_k=None, include="all", no_store=True)
    assert pedagogical_file(argparse.Namespace(**values), settings, Analyzer(tiny, settings)) == 0
    assert "could not be given as chat messages" not in capsys.readouterr().err


@pytest.mark.real_model
def test_real_model_rendered_line_gives_its_messages(real_analyzer):
    """On the default model (SmolLM2, whose template writes a default system prompt), a line
    given as rendered text makes the record of the same line given as messages."""
    tok = real_analyzer.pair.student.tokenizer
    messages = PROMPT[1:]  # no system message: the template's default is in the text
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    options = pedagogical_options(real_analyzer, threshold=0.2, max_new_tokens=4)
    common = {"response": "17*23 = 391.", "reference_answer": "391", "generation": options["generation"]}
    records = [
        run_line(
            real_analyzer, 1, prepare_line(real_analyzer, {"prompt": given, **extra, **common}, options)
        )[1]
        for given, extra in ((messages, {}), (text, {"rendered": True}))
    ]
    assert [(r["prompt"], r["prompt_text"]) for r in records] == [(messages, None)] * 2
    assert records[0]["pedagogical"]["response_ids"] == records[1]["pedagogical"]["response_ids"]
