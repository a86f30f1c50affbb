"""An analysis's verdict as the API and its page give it (#28): the answer math-verify parsed,
how it found it, and an answer that only restates the question judged wrong, with the reason."""

from __future__ import annotations

RAMBLING = "91-58 is a type of mathematical constant that is often used in mathematics."


def test_the_analysis_says_what_it_parsed_and_why_a_restatement_is_wrong(tiny_client):
    body = {"prompt": "What is 91-58?", "response": RAMBLING, "reference_answer": "33"}
    analysis = tiny_client.post("/api/analyze", json=body).json()
    assert analysis["verdict"] == {
        "correct": False, "method": "math-verify", "parsed_answer": "91-58", "parsed_reference": "33",
        "extractor": "last expression", "restated": True, "text_form": None,
    }  # fmt: skip
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    assert 'The response is <b data-key="correct">wrong</b>' in page
    assert '<code data-key="parsed_answer">91-58</code>' in page
    assert '<span data-key="extractor">(found as: last expression)</span>' in page
    assert 'data-key="restated">that answer only restates the question</b>' in page


def test_a_worked_answer_names_its_extractor(tiny_client):
    body = {"prompt": "What is 91-58?", "response": r"91 - 58 = 33, so \boxed{33}", "reference_answer": "33"}
    analysis = tiny_client.post("/api/analyze", json=body).json()
    v = analysis["verdict"]
    assert (v["correct"], v["parsed_answer"], v["extractor"], v["restated"]) == (True, "33", "boxed", False)
    page = tiny_client.get(f"/analyses/{analysis['id']}").text
    assert "(found as: boxed)" in page and 'data-key="restated"' not in page
