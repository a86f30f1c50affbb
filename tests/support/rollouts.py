"""Rollout records (the shape a pedagogical job stores per line, see app/report/pedagogical.py)
made from real runs on a model pair: the student's own rollout analysed (OPD's view) and a
pedagogical rollout with its threshold sweep. The reference answers are picked from the texts
the runs produce, so that one small set holds every case the comparison tells apart: a prompt
the student fails and the teacher rescues, one both solve, one neither solves, one without a
reference, one only the student solves. Each verdict is still the reference check of a real
text (`answer_matches`, as the rollout runs it), not a value set by hand.
"""

from __future__ import annotations

from typing import Any

from vrollout.pipeline.analyzer import Analyzer
from vrollout.verdicts.answers import answer_matches

SUMMARY_KEYS = (
    "policy", "response_ids", "response_text", "tokens", "interventions", "num_interventions",
    "reference_answer", "reached_reference",
)  # fmt: skip
SWEEP = [0.01, 0.2, 0.9]
MAX_NEW_TOKENS = 8
THRESHOLD = 0.2


def run_line(analyzer: Analyzer, prompt: str, response: str | None = None) -> dict[str, Any]:
    """One line's record without a reference (and no `id`/`line` yet): `with_reference` adds
    the verdicts. Greedy decoding: the texts do not depend on the reference."""
    line: dict[str, Any] = {"prompt": prompt, "privileged": "think of the answer"}
    if response is not None:
        line["response"] = response
    analysis = analyzer.analyze({**line, "generation": {"max_new_tokens": MAX_NEW_TOKENS}})
    request = {
        **line,
        "threshold": THRESHOLD,
        "sweep": SWEEP,
        "generation": {"max_new_tokens": MAX_NEW_TOKENS},
    }
    request.pop("response", None)
    result = analyzer.pedagogical(analyzer.prepare_pedagogical(request))
    summary = analysis["summary"]
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "prompt_text": None,
        "reference_answer": None,
        "student": {
            "analysis_id": analysis["id"],
            "response_ids": analysis["response_ids"],
            "response_text": analysis["response_text"],
            "correct": None,
            "generated": response is None,
        },
        "opd": {
            "divergences": summary["divergences"],
            "reverse_kl_total": summary["reverse_kl_total"],
            "forks_that_matter": summary.get("forks_that_matter"),
        },
        "pedagogical": {**{key: result[key] for key in SUMMARY_KEYS}, "correct": None},
        "sweep": result["sweep"],
    }


def plain(analyzer: Analyzer, text: str) -> str:
    """A text without its special tokens (what the reference check reads)."""
    tok = analyzer.pair.student.tokenizer
    return tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True)


def with_reference(analyzer: Analyzer, record: dict[str, Any], reference: str | None) -> dict[str, Any]:
    """The record's verdicts for this reference: `answer_matches`, the check a pedagogical
    rollout runs (core.pedagogical.summarize_rollout), on each text."""

    def check(text: str) -> bool | None:
        return None if reference is None else answer_matches(plain(analyzer, text), reference)

    ped = record["pedagogical"]
    return {
        **record,
        "reference_answer": reference,
        "student": {**record["student"], "correct": check(record["student"]["response_text"])},
        "pedagogical": {
            **ped,
            "reference_answer": reference,
            "reached_reference": check(ped["response_text"]),
            "correct": check(ped["response_text"]),
        },
        "sweep": [{**r, "reached_reference": check(r["response_text"])} for r in record["sweep"]],
    }


def _marks(text: str) -> set[str]:
    """The printable characters of a text that can stand as a reference (no digits: a numeric
    reference compares numbers; no spaces: the check ignores them). A random model writes
    bytes, not words, so a single character is what its texts share or not."""
    return {c for c in text if c.isprintable() and not c.isspace() and not c.isdigit() and c != "\ufffd"}


KINDS = ("rescue", "both", "neither", "none", "student_only")


def mixed_records(analyzer: Analyzer, prompts: int = 6) -> list[dict[str, Any]]:
    """Records with every kind of outcome (KINDS, see the module docstring), each taken by the
    first prompt whose texts allow it; raises if the model's texts cannot give one."""
    records: list[dict[str, Any]] = []
    seen: list[str] = []
    for i in range(prompts):
        prompt = f"Question {i}: what comes next in the sequence {'ab' * (i + 1)}?"
        response = "a given response" if i == 3 else None
        probe = run_line(analyzer, prompt, response)
        student = _marks(plain(analyzer, probe["student"]["response_text"]))
        ped = _marks(plain(analyzer, probe["pedagogical"]["response_text"]))
        choices = {
            "rescue": sorted(ped - student),
            "both": sorted(ped & student),
            "neither": ["no such answer here"],
            "none": [None],
            "student_only": sorted(student - ped),
        }
        kind = next((k for k in KINDS if k not in seen and choices[k]), KINDS[i % len(KINDS)])
        seen.append(kind)
        reference = (choices[kind] or ["no such answer here"])[0]
        records.append({"id": f"p-{i}", "line": i + 1, **with_reference(analyzer, probe, reference)})
    missing = set(KINDS) - set(seen)
    assert not missing, f"no prompt gave these outcomes: {missing}"
    return records
