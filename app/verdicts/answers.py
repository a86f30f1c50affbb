"""Answer checking: does a text reach the reference answer? `answer_matches` is the quick rule
(plain strings and the last number) that recovery and pedagogical rollouts run on every
continuation; `verdict` is the careful one (math-verify, then text) behind a trajectory's
`correct`. No model, so pages, reports and both backends share one definition."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from vrollout.verdicts import math_check

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def answer_matches(text: str, reference: str) -> bool:
    """Does `text` reach `reference`? A numeric reference is compared numerically with the
    last number in the text (391 == 391.0 == 391.00); any other reference must appear in the
    text, case and whitespace aside."""
    want = _number(reference.strip())
    if want is not None:
        found = NUMBER.findall(text)
        got = _number(found[-1]) if found else None
        return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return norm(reference) in norm(text)


# --- Verdicts: is a trajectory's response right? (docs/metrics.md, "Verdicts") -------------------
# math-verify (sympy underneath) can take minutes on crafted LaTeX, in any thread: it runs in a
# helper process under a wall-clock deadline (`math_check`, Settings.math_verify_timeout_s) on
# the end of the response and of the reference (math_check.TAIL_CHARS), and a check past the
# deadline counts as math-verify not deciding.

# Words that introduce a gloss in a reference: "0 (i.e., no real-valued zeros)".
GLOSS_LEADS = ("i e ", "ie ", "e g ", "eg ", "that is ", "namely ", "or ")
WORD_CHARS = re.compile(r"[^\w]+")


def verdict(
    text: str,
    reference: str | None,
    given: bool | None = None,
    deadline_s: float = math_check.DEADLINE_S,
    lane: math_check.Lane = "model",
    budget: math_check.Budget | None = None,
) -> dict[str, Any] | None:
    """Whether `text` reaches `reference`, and how that was decided (None: neither a given
    verdict nor a reference; no check runs then). In order: a `given` verdict (the log's own
    `correct`) is taken as is; math-verify equal -> right; a textual form of the reference inside
    the text -> right; math-verify parsed both and they differ -> wrong; else wrong by the text
    rule. `deadline_s`: math-verify's wall-clock limit (Settings.math_verify_timeout_s); `lane`
    and `budget`: whose helpers check and what the caller may spend (`math_check.check`)."""
    if given is not None:
        return {"correct": given, "method": "given", "parsed_answer": None, "parsed_reference": None}
    if reference is None or not str(reference).strip():
        return None
    reference = str(reference)
    checked = math_check.check(text, reference, deadline_s, lane, budget) or {
        "answer": None,
        "reference": None,
        "both": False,
    }
    parsed = {"parsed_answer": checked["answer"], "parsed_reference": checked["reference"]}
    if checked["both"] and checked["equal"]:
        return {"correct": True, "method": "math-verify", **parsed}
    if text_matches(text, reference):
        return {"correct": True, "method": "text", **parsed}
    if checked["both"]:
        return {"correct": False, "method": "math-verify", **parsed}
    return {"correct": False, "method": "text", **parsed}


def normalized_words(text: str) -> str:
    """Lower case, NFKC, every run of non-word characters one space: "Real-valued" -> "real valued"."""
    return " ".join(WORD_CHARS.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def reference_forms(reference: str) -> list[str]:
    """The textual forms of a reference, normalised: the whole of it, the part before a
    parenthesis, and each parenthesised gloss without its lead ("i.e.", "e.g.", "that is", ...).
    Forms without a letter (numbers, symbols) are left to math-verify: "0" would be found in any
    text with a zero in it."""
    parts = [reference, re.sub(r"\([^()]*\)", " ", reference), *re.findall(r"\(([^()]*)\)", reference)]
    forms = []
    for part in parts:
        form = normalized_words(part)
        for lead in GLOSS_LEADS:
            form = form.removeprefix(lead)
        if any(c.isalpha() for c in form) and form not in forms:
            forms.append(form)
    return forms


def text_matches(text: str, reference: str) -> bool:
    """A textual form of the reference (`reference_forms`) appears in the text as whole words."""
    haystack = f" {normalized_words(text)} "
    return any(f" {form} " in haystack for form in reference_forms(reference))
