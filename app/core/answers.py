"""Answer checking: does a text reach the reference answer? Plain string and number rules, no
model, so pages, reports and both backends share one definition."""

from __future__ import annotations

import math
import re

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
