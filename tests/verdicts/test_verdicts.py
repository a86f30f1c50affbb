"""Verdicts (docs/metrics.md, "Verdicts"): a log's own `correct` is taken as is; otherwise
math-verify, then the text rule for plain-text answers. No model."""

from __future__ import annotations

import threading

import pytest
from vrollout.verdicts.answers import answer_matches, question_of, reference_forms, restates, verdict


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
        "extractor": None, "restated": False, "text_form": None,
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
        {"correct": True, "method": "math-verify", "parsed_answer": "4", "parsed_reference": "4",
         "extractor": "boxed", "restated": False, "text_form": None}
    ]  # fmt: skip


# --- What was parsed, and how (#28) ----------------------------------------------------------------

RAMBLING = "91-58 is a type of mathematical constant that is often used in mathematics."


def test_an_answer_that_only_restates_the_question_is_not_right():
    """math-verify reads "91-58" from the rambling text and evaluates it to 33: without the
    question it is judged right; with it, the verdict says the answer was copied, and wrong."""
    alone = verdict(RAMBLING, "33")
    assert (alone["correct"], alone["parsed_answer"], alone["extractor"]) == (
        True,
        "91-58",
        "last expression",
    )
    found = verdict(RAMBLING, "33", question="What is 91-58?")
    assert found == {
        "correct": False, "method": "math-verify", "parsed_answer": "91-58", "parsed_reference": "33",
        "extractor": "last expression", "restated": True, "text_form": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "question", "reference", "correct", "parsed", "extractor"),
    [
        ("91 - 58 = 33", "What is 91-58?", "33", True, "33", "last number"),  # worked out: right
        ("It is 33.", "What is 33 + 0?", "33", True, "33", "last number"),  # a number is an answer
        (
            r"So $x = \frac{1}{2}$.",
            r"Is x $\frac12$ or $\frac13$?",
            r"\frac{1}{2}",
            True,
            r"x = \frac{1}{2}",
            "latex",
        ),
        (r"The answer is $2 \cdot 3$", r"What is $2 \cdot 3$?", "6", False, r"2 \cdot 3", "after 'answer'"),
        (r"\boxed{91-58}", "What is 91-58?", "33", False, "91-58", "boxed"),
        ("The final answer is 33", "What is 91-58?", "33", True, "33", "final answer"),
    ],
)
def test_restatements_and_extractors(text, question, reference, correct, parsed, extractor):
    found = verdict(text, reference, question=question)
    assert (found["correct"], found["parsed_answer"], found["extractor"]) == (correct, parsed, extractor)
    assert found["restated"] is (not correct)


def test_the_restatement_rule():
    assert restates("91-58", "What is 91 - 58?") and restates("x = 91-58", "What is 91-58?")
    assert not restates("33", "Is it 33?")  # a number
    assert not restates("91-58", None) and not restates(None, "What is 91-58?")
    assert not restates(
        r"\frac{1}{2}", r"$\frac{1}{2}$ or $\frac{1}{3}$?", (r"\frac{1}{2}",)
    )  # the reference
    assert not restates("91-57", "What is 91-58?")


def test_the_text_rule_says_which_form_it_found():
    found = verdict("Hence f has no real-valued zeros.", "0 (i.e., no real-valued zeros)")
    assert found["text_form"] == "no real valued zeros" and found["extractor"] is None


def test_question_of_messages():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 91-58?"}]
    assert question_of(messages) == "Be brief.\nWhat is 91-58?" and question_of(None) is None


def test_latex_commands_are_not_words_of_the_reference():
    """The reference "$\\boxed{((100)!)!}$ (a huge number)" without its parentheses was the form
    "boxed", found in any boxed answer; LaTeX commands give no words now."""
    assert reference_forms(r"$\boxed{((100)!)!}$ (a huge number)") == ["100 a huge number", "a huge number"]
    assert reference_forms(r"\frac{1}{2}") == []
    assert verdict(r"It is \boxed{7}", r"\boxed{((100)!)!} (huge)", deadline_s=1.0)["text_form"] is None
