"""The pedagogical comparison and export (app/report/pedagogical.py) over rollout records made
from real runs of the tiny pair: every headline against a direct numpy/pandas computation from
the records, the export read back with `datasets` and pandas, and fed to TRL's SFT trainer."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from support import tiny_settings
from support.rollouts import mixed_records
from vrollout.pipeline.analyzer import Analyzer
from vrollout.report.pedagogical import (
    COMPARISON_COLUMNS,
    RESCUE_BUDGETS,
    comparison_rows,
    comparison_summary,
    export_rows,
    headline_rows,
    prompt_view,
    rollouts_parquet_chunks,
    substituted_segments,
    write_pedagogical,
)
from vrollout.report.pedagogical_figures import comparison_figures


@pytest.fixture(scope="module")
def records(tiny, tmp_path_factory):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path_factory.mktemp("ped")))
    return mixed_records(analyzer)


def frame(records) -> pd.DataFrame:
    """The records flattened with pandas, independently of the module under test."""
    return pd.DataFrame(
        {
            "student": [r["student"]["correct"] for r in records],
            "ped": [r["pedagogical"]["correct"] for r in records],
            "n": [len(r["pedagogical"]["interventions"]) for r in records],
            "div": [r["opd"]["divergences"] for r in records],
        }
    )


def logprobs_of(record) -> list[float]:
    tokens = record["pedagogical"]["tokens"]
    return [tokens[i["position"]]["student_logprob"] for i in record["pedagogical"]["interventions"]]


def close(a, b) -> bool:
    return (a is None and b is None) or (
        a is not None and b is not None and math.isclose(a, b, abs_tol=1e-12)
    )


def check_stats(got: dict, values: list[float]) -> None:
    values = np.asarray(values, dtype=float)
    assert got["n"] == len(values)
    if not len(values):
        assert all(got[k] is None for k in ("mean", "median", "p10", "p90", "min", "max"))
        return
    want = {
        "mean": values.mean(), "median": np.median(values), "p10": np.percentile(values, 10),
        "p90": np.percentile(values, 90), "min": values.min(), "max": values.max(),
    }  # fmt: skip
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_every_headline_matches_a_direct_computation(records):
    df = frame(records)
    summary = comparison_summary(iter(records))  # one pass over an iterator, as Jobs.rollouts gives
    assert summary["lines"] == len(records) == 6
    for part, column in (("student", "student"), ("pedagogical", "ped")):
        judged = df[column].dropna().astype(bool)
        assert summary[part]["judged"] == len(judged)
        assert summary[part]["correct"] == judged.sum()
        assert summary[part]["rate"] == pytest.approx(judged.mean())
    solved = df[df.ped.eq(True)]  # noqa: E712
    check_stats(summary["interventions_per_success"], solved.n.tolist())
    check_stats(summary["interventions_all"], df.n.tolist())
    check_stats(summary["opd_divergences"], df["div"].tolist())
    check_stats(summary["opd_divergences_same_lines"], solved["div"].tolist())

    failures = df[df.student.eq(False)]
    assert summary["rescue"]["student_failures"] == len(failures) > 0
    by_budget = {r["budget"]: r for r in summary["rescue"]["by_budget"]}
    assert tuple(by_budget) == RESCUE_BUDGETS
    for budget in RESCUE_BUDGETS:
        rescued = (failures.ped.eq(True) & (failures.n <= budget)).sum()
        assert by_budget[budget]["rescued"] == rescued
        assert by_budget[budget]["share"] == pytest.approx(rescued / len(failures))
    assert by_budget[8]["rescued"] > 0  # the records hold a rescue

    sweep = pd.DataFrame([{"threshold": s["threshold"], **s} for r in records for s in r["sweep"]]).groupby(
        "threshold"
    )
    assert [s["threshold"] for s in summary["sweep"]] == sorted(sweep.groups)
    for row in summary["sweep"]:
        group = sweep.get_group(row["threshold"])
        judged = group.reached_reference.dropna().astype(bool)
        assert row["lines"] == len(group) and row["judged"] == len(judged)
        assert row["success_rate"] == pytest.approx(judged.mean())
        assert row["mean_interventions"] == pytest.approx(group.num_interventions.mean())

    every = [lp for r in records for lp in logprobs_of(r)]
    assert every, "the records hold interventions"
    check_stats(summary["intervention_student_logprob"], every)
    check_stats(
        summary["max_surprisal_per_rollout"], [-min(logprobs_of(r)) for r in records if logprobs_of(r)]
    )


def test_rows_follow_the_csv_contract(records):
    rows = list(comparison_rows(records))
    assert COMPARISON_COLUMNS[:6] == (
        "id", "student_correct", "opd_divergences", "opd_reverse_kl_total", "pedagogical_correct",
        "interventions",
    )  # fmt: skip
    for row, record in zip(rows, records, strict=True):
        assert tuple(row) == COMPARISON_COLUMNS
        assert row["id"] == record["id"] and row["analysis_id"] == record["student"]["analysis_id"]
        assert row["interventions"] == len(record["pedagogical"]["interventions"])
        ped = record["pedagogical"]
        assert row["first_intervention"] == (
            ped["interventions"][0]["position"] if ped["interventions"] else None
        )
        reached = [s["num_interventions"] for s in record["sweep"] if s["reached_reference"]]
        assert row["sweep_min_interventions_to_success"] == (min(reached) if reached else None)
        lps = logprobs_of(record)
        assert close(row["max_intervention_surprisal"], -min(lps) if lps else None)
        assert ped["interventions"] == [] or all(
            i["student_surprisal"] == pytest.approx(-lp)
            for i, lp in zip(ped["interventions"], lps, strict=True)
        )


def test_no_reference_anywhere_is_null_not_an_error(records):
    bare = [
        {
            **r,
            "student": {**r["student"], "correct": None},
            "pedagogical": {**r["pedagogical"], "correct": None},
            "sweep": None,
        }
        for r in records
    ]
    summary = comparison_summary(bare)
    assert summary["student"] == {"correct": 0, "judged": 0, "rate": None}
    assert summary["pedagogical"]["rate"] is None
    assert summary["interventions_per_success"]["median"] is None
    assert summary["rescue"] == {
        "student_failures": 0,
        "by_budget": [{"budget": b, "rescued": 0, "share": None} for b in RESCUE_BUDGETS],
    }
    assert summary["sweep"] == []
    assert all("–" in h["text"] for h in headline_rows(summary) if h["key"].startswith("rescued_"))
    figures = comparison_figures(summary, list(comparison_rows(bare)))
    assert "sweep" not in figures and "rescue" not in figures  # nothing to draw, not drawn empty
    empty = comparison_summary([])
    assert empty["lines"] == 0 and empty["opd_divergences"]["mean"] is None
    assert comparison_figures(empty, []) == {}


def test_export_lines_are_designs_rollouts_jsonl(records):
    successful = list(export_rows(records))
    solved = [r for r in records if r["pedagogical"]["correct"] is True]
    assert [e["id"] for e in successful] == [r["id"] for r in solved] and solved
    everything = list(export_rows(records, include="all"))
    assert len(everything) == len(records)
    for line, record in zip(everything, records, strict=True):
        assert list(line) == [
            "id", "prompt", "completion", "prompt_text", "completion_ids", "interventions", "success",
        ]  # fmt: skip
        ped = record["pedagogical"]
        assert (line["prompt"], line["prompt_text"]) == (record["prompt"], None)
        assert line["completion_ids"] == ped["response_ids"]
        assert line["success"] is ped["correct"]
        assert line["completion"][0]["role"] == "assistant"
        assert line["completion"][0]["content"] in ped["response_text"]
        for out, i in zip(line["interventions"], ped["interventions"], strict=True):
            assert list(out) == [
                "position", "token_id", "student_token_id", "student_logprob",
                "teacher_prob_of_student_token",
            ]  # fmt: skip
            step = ped["tokens"][out["position"]]
            assert (
                out["token_id"]
                == step["token_id"]
                == i["substitute_id"]
                == line["completion_ids"][out["position"]]
            )
            assert out["student_token_id"] == i["proposal_id"] != out["token_id"]
            assert out["student_logprob"] == step["student_logprob"]
            assert out["teacher_prob_of_student_token"] == i["proposal_teacher_prob"]
    messages = list(export_rows(records, include="all", style="messages"))
    for m, line in zip(messages, everything, strict=True):
        assert m["messages"] == line["prompt"] + line["completion"]
        assert {k: v for k, v in m.items() if k != "messages"} == {
            k: v for k, v in line.items() if k not in ("prompt", "completion")
        }
    with pytest.raises(ValueError, match="include"):
        list(export_rows(records, include="some"))
    with pytest.raises(ValueError, match="style"):
        list(export_rows(records, style="chat"))


def test_completion_text_leaves_out_the_end_token():
    ped = {
        "policy": {"max_new_tokens": 8},
        "response_ids": [5, 6, 2],
        "response_text": "ab<|im_end|>",
        "tokens": [
            {"position": p, "token": t, "student_logprob": -1.0}
            for p, t in enumerate(["a", "b", "<|im_end|>"])
        ],
        "interventions": [],
        "num_interventions": 0,
        "correct": True,
    }
    record = {"id": "x", "prompt": [{"role": "user", "content": "q"}], "pedagogical": ped}
    line = next(export_rows([record]))
    assert line["completion"][0]["content"] == "ab" and line["completion_ids"] == [5, 6, 2]
    # Cut at max_new_tokens: the last token is kept unless it is an end id
    full = {**ped, "policy": {"max_new_tokens": 3}}
    assert next(export_rows([{**record, "pedagogical": full}]))["completion"][0]["content"] == "ab<|im_end|>"
    line = next(export_rows([{**record, "pedagogical": full}], end_ids={2}))
    assert line["completion"][0]["content"] == "ab"


@pytest.mark.parametrize("style", ["prompt-completion", "messages"])
def test_parquet_reads_back_with_pandas_and_datasets(records, tmp_path, style):
    from datasets import Dataset

    rows = list(export_rows(records, include="all", style=style))
    path = tmp_path / "rollouts.parquet"
    path.write_bytes(b"".join(rollouts_parquet_chunks(iter(rows), style, group_rows=2)))  # several row groups
    df = pd.read_parquet(path)
    assert df.id.tolist() == [r["id"] for r in rows]
    assert [list(ids) for ids in df.completion_ids] == [r["completion_ids"] for r in rows]
    ds = Dataset.from_parquet(str(path))
    assert ds.to_list() == rows
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"".join(rollouts_parquet_chunks(iter([]), style)))
    assert len(pd.read_parquet(empty)) == 0 and "completion_ids" in pd.read_parquet(empty).columns


def test_write_pedagogical_and_read_back_with_datasets(records, tmp_path):
    from datasets import load_dataset

    failed: list[tuple[int, str]] = []

    def stream():  # as the CLI gives them: a line that fails is noted while the records are read
        yield from records
        failed.append((99, "<i>bad</i> line"))

    summary = write_pedagogical(stream(), tmp_path / "out", include="all", name="<b>run</b>", errors=failed)
    assert summary == comparison_summary(records)
    out = tmp_path / "out"
    ds = load_dataset("json", data_files=str(out / "rollouts.jsonl"), split="train")
    assert ds.to_list() == [json.loads(json.dumps(r)) for r in export_rows(records, include="all")]
    with (out / "comparison.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COMPARISON_COLUMNS
    assert [r["id"] for r in table] == [r["id"] for r in records]
    frame_csv = pd.read_csv(out / "comparison.csv")
    assert frame_csv.interventions.tolist() == [len(r["pedagogical"]["interventions"]) for r in records]
    page = (out / "report.html").read_text()
    assert "<b>run</b>" not in page and "&lt;b&gt;run&lt;/b&gt;" in page  # escaped
    assert "line 99: &lt;i&gt;bad&lt;/i&gt; line" in page and "1 failed" in page
    assert "<script src=" not in page and "Content-Security-Policy" in page  # offline, one file
    for h in headline_rows(summary):
        assert f'data-measure="{h["key"]}"' in page
    for key in comparison_figures(summary, list(comparison_rows(records))):
        assert f'id="fig-{key}"' in page
    # The default keeps only the rollouts that reached the reference
    write_pedagogical(records, tmp_path / "ok")
    kept = [json.loads(x)["id"] for x in (tmp_path / "ok" / "rollouts.jsonl").read_text().splitlines()]
    assert kept == [r["id"] for r in records if r["pedagogical"]["correct"] is True]


def test_a_line_trains_in_trl_as_is(records, tmp_path):
    """The exported file, loaded as it is, is a dataset TRL's SFTTrainer takes: its collator
    makes a batch whose labels cover the completion only, and one training step runs."""
    import torch
    import trl
    from datasets import load_dataset
    from support.tiny import tiny_model, tiny_tokenizer

    write_pedagogical(records, tmp_path / "out", include="all")
    ds = load_dataset("json", data_files=str(tmp_path / "out" / "rollouts.jsonl"), split="train")
    tok = tiny_tokenizer()  # the student's tokenizer
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to="none",
        use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    policy = tiny_model(len(tok))
    trainer = trl.SFTTrainer(model=policy, args=args, train_dataset=ds, processing_class=tok)
    assert isinstance(trainer.data_collator, trl.trainer.sft_trainer.DataCollatorForLanguageModeling)
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    prompt_len = len(
        tok.apply_chat_template(ds[0]["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    assert (labels[:prompt_len] == -100).all()  # no loss on the prompt
    assert torch.equal(labels[prompt_len:], ids[prompt_len:])  # loss on the completion
    content = tok.decode(ids[prompt_len:])
    assert content.startswith(ds[0]["completion"][0]["content"])
    before = policy.lm_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, policy.lm_head.weight)


# --- Side by side, and both texts per prompt (#28) ---------------------------------------------


def test_headlines_sit_in_three_columns(records):
    rows = headline_rows(comparison_summary(records))
    columns = {}
    for h in rows:
        columns.setdefault(h["column"], []).append(h["key"])
    assert list(columns) == ["all", "student", "opd", "pedagogical"]
    assert columns["student"] == ["student_success", "student_tokens"]
    assert columns["opd"] == ["opd_divergences", "opd_divergences_same_lines"]
    assert columns["pedagogical"][:3] == [
        "pedagogical_success",
        "pedagogical_tokens",
        "interventions_per_success",
    ]
    lengths = comparison_summary(records)["student_tokens"]
    assert lengths["n"] == len(records)
    assert lengths["median"] == float(np.median([len(r["student"]["response_ids"]) for r in records]))


def test_segments_mark_exactly_the_substituted_tokens(records):
    for record in records:
        ped = record["pedagogical"]
        runs = substituted_segments(ped)
        assert "".join(r["text"] for r in runs) == "".join(t["token"] for t in ped["tokens"])
        marked = [r["position"] for r in runs if r["teacher"]]
        assert marked == [i["position"] for i in ped["interventions"]]
        proposals = [r["proposal"] for r in runs if r["teacher"]]
        assert proposals == [i["proposal"] for i in ped["interventions"]]
        # the student's own tokens are merged: no two runs of them follow each other
        assert all(a["teacher"] or b["teacher"] for a, b in zip(runs[:-1], runs[1:], strict=True))
    assert any(r["pedagogical"]["interventions"] for r in records)


def test_a_prompt_view_carries_both_texts_and_verdicts(records):
    record = next(r for r in records if r["pedagogical"]["interventions"])
    view = prompt_view(record)
    assert view["student"]["text"] == record["student"]["response_text"]
    assert view["pedagogical"]["interventions"] == len(record["pedagogical"]["interventions"])
    assert view["question"] and view["analysis_id"] == record["student"]["analysis_id"]


def test_report_html_shows_both_texts_with_the_substitutions_marked(records, tmp_path):
    write_pedagogical(records, tmp_path / "out", include="all")
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="comparison-texts"' in page and page.count('class="ped-prompt"') == len(records)
    marks = sum(len(r["pedagogical"]["interventions"]) for r in records)
    assert page.count('<mark class="ped-sub" title=') == marks
    for key in ("student", "opd", "pedagogical"):
        assert f'data-column="{key}"' in page
