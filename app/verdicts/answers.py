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
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


def verdict(
    text: str,
    reference: str | None,
    given: bool | None = None,
    deadline_s: float = math_check.DEADLINE_S,
    lane: math_check.Lane = "model",
    budget: math_check.Budget | None = None,
    question: str | None = None,
) -> dict[str, Any] | None:
    """Whether `text` reaches `reference`, and how that was decided (None: neither a given
    verdict nor a reference; no check runs then). In order: a `given` verdict (the log's own
    `correct`) is taken as is; math-verify equal -> right, unless the answer it parsed only
    restates an expression of the `question` (the prompt the student saw; `restates`); a
    textual form of the reference inside the text -> right; math-verify parsed both and they
    differ -> wrong; else wrong by the text rule. `deadline_s`: math-verify's wall-clock limit
    (Settings.math_verify_timeout_s); `lane` and `budget`: whose helpers check and what the
    caller may spend (`math_check.check`). Besides `correct` and `method`, the verdict says
    what was parsed and how: `parsed_answer` and `extractor` (math-verify's reading of the
    response and the way it found it, `math_check.EXTRACTORS`), `parsed_reference`,
    `restated` (the parsed answer is an expression copied from the question) and `text_form`
    (the form of the reference the text rule found)."""
    if given is not None:
        return {"correct": given, "method": "given", **NOTHING_PARSED}
    if reference is None or not str(reference).strip():
        return None
    reference = str(reference)
    checked = math_check.check(text, reference, deadline_s, lane, budget) or {
        "answer": None,
        "reference": None,
        "both": False,
    }
    restated = bool(checked["both"]) and restates(
        checked["answer"], question, (reference, checked["reference"])
    )
    form = text_form(text, reference)
    parsed = {
        "parsed_answer": checked["answer"],
        "parsed_reference": checked["reference"],
        "extractor": checked.get("extractor"),
        "restated": restated,
        "text_form": form,
    }
    if checked["both"] and checked["equal"] and not restated:
        return {"correct": True, "method": "math-verify", **parsed}
    if form is not None:
        return {"correct": True, "method": "text", **parsed}
    if checked["both"]:
        return {"correct": False, "method": "math-verify", **parsed}
    return {"correct": False, "method": "text", **parsed}


# What a verdict that parsed nothing (a given one) says about parsing.
NOTHING_PARSED: dict[str, Any] = {
    "parsed_answer": None,
    "parsed_reference": None,
    "extractor": None,
    "restated": False,
    "text_form": None,
}
# Spacing and sizing commands that do not change what an expression says.
LATEX_NOISE = re.compile(r"\\(?:left|right|[,;:! ]|displaystyle)|[\s$]")


def _squeezed(text: str) -> str:
    return LATEX_NOISE.sub("", unicodedata.normalize("NFKC", text))


def question_of(messages: list[dict[str, Any]] | None) -> str | None:
    """What a prompt given as chat messages asks: the text of every message, joined (None
    without messages): the `question` of `verdict`."""
    if not messages:
        return None
    return "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))


def restates(answer: str | None, question: str | None, references: tuple[str | None, ...] = ()) -> bool:
    """Is math-verify's `answer` only an expression copied from the `question`? ("91-58" read
    from "91-58 is a type of mathematical constant..." for "What is 91-58?": math-verify
    evaluates it to 33, but the response never computed it.) Spaces, `$` and LaTeX spacing
    aside, the answer (the right side of its last `=`) must appear in the question and be more
    than a number (a number is an answer even where the question holds it) and not be the
    reference as written (a question may offer the right answer among others)."""
    if not answer or not question:
        return False
    said = _squeezed(answer).rsplit("=", 1)[-1]
    if not said or NUMBER.fullmatch(said) or not any(c.isdigit() for c in said):
        return False
    if any(ref is not None and _squeezed(ref) == said for ref in references):
        return False
    return said in _squeezed(question)


def normalized_words(text: str) -> str:
    """Lower case, NFKC, every run of non-word characters one space: "Real-valued" -> "real valued"."""
    return " ".join(WORD_CHARS.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def reference_forms(reference: str) -> list[str]:
    """The textual forms of a reference, normalised: the whole of it, the part before a
    parenthesis, and each parenthesised gloss without its lead ("i.e.", "e.g.", "that is", ...).
    Forms without a letter (numbers, symbols) are left to math-verify: "0" would be found in any
    text with a zero in it. LaTeX commands are not words: `\\boxed{5}` gives no form "boxed",
    which any boxed answer would hold."""
    parts = [reference, re.sub(r"\([^()]*\)", " ", reference), *re.findall(r"\(([^()]*)\)", reference)]
    forms = []
    for part in parts:
        form = normalized_words(LATEX_COMMAND.sub(" ", part))
        for lead in GLOSS_LEADS:
            form = form.removeprefix(lead)
        if any(c.isalpha() for c in form) and form not in forms:
            forms.append(form)
    return forms


def text_form(text: str, reference: str) -> str | None:
    """The first textual form of the reference (`reference_forms`) that appears in the text as
    whole words, normalised (None: none does)."""
    haystack = f" {normalized_words(text)} "
    return next((form for form in reference_forms(reference) if f" {form} " in haystack), None)


def text_matches(text: str, reference: str) -> bool:
    """A textual form of the reference (`reference_forms`) appears in the text as whole words."""
    return text_form(text, reference) is not None
