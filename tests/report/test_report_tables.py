"""The rows of the trajectories tables (job page, /analyses) and the job's first screen
(report/overview.py), on digests: the numbers checked against the steps they come from."""

from __future__ import annotations

import pytest
from support.synthetic import CONTEXT_NULL, synthetic_analysis
from vrollout.pipeline.assembly import summarize
from vrollout.pipeline.digest import digest
from vrollout.report.overview import dataset_answer, settings_of
from vrollout.report.tables import kl_strip, tenth_sizes, trajectory_row


@pytest.mark.parametrize("tokens", [1, 3, 9, 10, 11, 37])
def test_tenths_cut_the_response_as_the_deciles_do(tokens):
    want = [0] * 10
    for t in range(tokens):
        want[min(9, t * 10 // tokens)] += 1
    assert tenth_sizes(tokens) == want


@pytest.mark.parametrize("length", [7, 23, 64])
def test_the_mini_strip_is_each_tenths_mean_reverse_kl(length):
    a = synthetic_analysis(length, top_k=2, seed=length)
    kl = [s["reverse_kl"] for s in a["steps"]]
    row = trajectory_row(digest(a))
    for i, value in enumerate(row["kl_strip"]):
        tenth = [k for t, k in enumerate(kl) if min(9, t * 10 // length) == i]
        assert value == (pytest.approx(sum(tenth) / len(tenth)) if tenth else None)
    divergences = sum(not s["agree"] for s in a["steps"])
    assert row["divergences_per_100_tokens"] == pytest.approx(100 * divergences / length)
    assert row["kl_top_5pct"] == a["summary"]["concentration"]["top_5pct"]


def test_a_conversations_mini_strip_is_the_mean_over_its_student_tokens():
    """Context steps are in the tenths of the response, not among its tokens."""
    a = synthetic_analysis(60, top_k=2, seed=5)
    for i, s in enumerate(a["steps"]):
        if 10 <= i < 25:  # a tool's turn: context, figures null
            s.update(dict.fromkeys(CONTEXT_NULL), scored=False, agree=True, teacher_topk=[], student_topk=[])
    a["summary"] = summarize(a["steps"])
    row = trajectory_row(digest(a))
    for i, value in enumerate(row["kl_strip"]):
        tenth = [
            s["reverse_kl"] for t, s in enumerate(a["steps"]) if t * 10 // 60 == i and s.get("scored", True)
        ]
        assert value == (pytest.approx(sum(tenth) / len(tenth)) if tenth else None)
    assert row["kl_strip"][2] is None  # steps 12-17: all context


def test_no_signal_no_strip():
    assert kl_strip({"deciles": None, "reverse_kl_total": 0.0, "tokens": 5}) is None
    assert trajectory_row({"tokens": 0, "divergences": 0})["divergences_per_100_tokens"] is None


def line(first, correct=None, agreement=0.9, top5=0.5, **extra) -> dict:
    return {
        "first_divergence": first,
        "correct": correct,
        "agreement_rate": agreement,
        "kl_top_5pct": top5,
        **extra,
    }


def test_the_answer_names_agreement_divergence_and_concentration():
    text = dataset_answer([line(4, True), line(8, True), line(2, False, agreement=0.5), line(None, False)])
    assert text.startswith(
        "Across 4 trajectories, the teacher's top choice is the student's token at a median 90%"
    )
    assert "75% of the trajectories diverge, first at token 4 (median)" in text
    assert "the top 5% of tokens carry 50% of the reverse KL" in text
    assert (
        "50% of 4 with a verdict are correct; correct ones first diverge at token 6, incorrect ones at 2."
        in text
    )
    assert dataset_answer([]) is None
    assert "no trajectory diverges" in dataset_answer([line(None)])
    assert "verdict" not in dataset_answer([line(3)])


def test_the_answer_splits_thinking_from_the_answer_where_marked():
    segments = {
        "thinking": {"tokens": 30, "reverse_kl_mean": 0.1},
        "answer": {"tokens": 10, "reverse_kl_mean": 0.4},
    }
    text = dataset_answer([line(1, segments=segments), line(2)])
    assert text.endswith("Thinking carries 0.100 nats per token over 30 tokens, the answer 0.400 over 10.")


def test_settings_name_every_option_and_say_which_are_defaults():
    settings = {
        s["name"]: s for s in settings_of({"top_k": 3, "continuation_tokens": 0, "objectives": ["k1", "k3"]})
    }
    assert settings["top_k"] == {"name": "top_k", "value": "3", "default": False}
    assert settings["objectives"]["value"] == "k1, k3"
    assert settings["teacher_context"] == {"name": "teacher_context", "value": "privileged", "default": True}
    assert "threshold" not in settings
    pedagogical = {s["name"]: s for s in settings_of({"mode": "pedagogical", "threshold": 0.1, "odd": 1})}
    assert pedagogical["threshold"]["value"] == "0.1" and pedagogical["seed"]["default"]
    assert pedagogical["odd"] == {"name": "odd", "value": "1", "default": False}


def test_a_pedagogical_jobs_sampling_is_shown_as_it_ran():
    """The job keeps it as one object, `generation`: each setting by its name, not the default."""
    options = {"mode": "pedagogical", "threshold": 0.2, "sweep": [0.01, 0.5],
               "generation": {"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0, "seed": 7}}  # fmt: skip
    settings = {s["name"]: s for s in settings_of(options)}
    assert settings["max_new_tokens"] == {"name": "max_new_tokens", "value": "24", "default": False}
    assert settings["seed"]["value"] == "7" and settings["sweep"]["value"] == "0.01, 0.5"
    assert "generation" not in settings
