"""Verdicts (docs/metrics.md, "Verdicts"): a log's own `correct` is taken as is; otherwise
math-verify, then the text rule for plain-text answers. No model."""

from __future__ import annotations

import threading

import pytest
from vrollout.verdicts.answers import answer_matches, reference_forms, verdict


@pytest.mark.parametrize(
    ("text", "reference", "correct", "method"),
    [
        # The CHAMP-style case: the last-number rule marked it wrong
        ("Hence f has no real-valued zeros.", "0 (i.e., no real-valued zeros)", True, "text"),
        (r"The answer is \boxed{\frac{1}{2}}", "0.5", True, "math-verify"),
        (r"so $x \in \{2, 1\}$", r"\{1,2\}", True, "math-verify"),
        ("17*23 = 381.", "391", False, "math-verify"),
        (r"It is $\boxed{391}$.", "391", True, "math-verify"),
        ("Paris is the capital.", "paris", True, "text"),
        ("It is Lyon.", "Paris", False, "text"),
        ("It has real zeros.", "0 (i.e., no real-valued zeros)", False, "text"),
    ],
)
def test_verdict_rules(text, reference, correct, method):
    found = verdict(text, reference)
    assert (found["correct"], found["method"]) == (correct, method)


def test_the_last_number_rule_missed_what_math_verify_finds():
    text = r"The answer is \boxed{\frac{1}{2}}, found in 3 steps."
    assert not answer_matches(text, "0.5")  # the quick rule reads 3
    found = verdict(text, "0.5")
    assert (
        found["correct"] and found["parsed_answer"] == r"\frac{1}{2}" and found["parsed_reference"] == "0.5"
    )


def test_a_given_verdict_is_not_rechecked_and_no_reference_gives_none():
    assert verdict("17*23 = 381.", "391", given=True) == {
        "correct": True, "method": "given", "parsed_answer": None, "parsed_reference": None,
    }  # fmt: skip
    assert verdict("2+2 = 4", None, given=False)["correct"] is False
    assert verdict("anything", None) is None and verdict("anything", "  ") is None


def test_reference_forms_leave_numbers_to_math_verify():
    assert reference_forms("0 (i.e., no real-valued zeros)") == [
        "0 i e no real valued zeros",
        "no real valued zeros",
    ]
    assert reference_forms("42") == [] and not verdict("I have 420 apples", "42")["correct"]


def test_verdicts_in_a_worker_thread():
    """math-verify's timeout uses SIGALRM (main thread only): jobs run in threads, and must not fail."""
    found = []
    worker = threading.Thread(target=lambda: found.append(verdict(r"\boxed{4}", "4")))
    worker.start()
    worker.join(60)
    assert found == [
        {"correct": True, "method": "math-verify", "parsed_answer": "4", "parsed_reference": "4"}
    ]
