"""The first screen of a job: its answer in one sentence, then every setting it ran with. Built
from the job's digests (`pipeline.digest`) in one pass and from its stored options; pure
functions, no database and no HTTP (the job page and GET /api/jobs/{id}/overview render it)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

# What a job's option is when the upload left it unset (the API's and the CLI's defaults,
# docs/formats.md and docs/objectives.md), in the order the page lists them.
DEFAULTS = {
    "mode": "analysis",
    "top_k": "5 (or VROLLOUT_MAX_TOP_K if lower)",
    "continuation_tokens": 0,
    "teacher_context": "privileged",
    "teacher_template": "the server's teacher template",
    "objectives": "all",
    "objective_k": 20,
    "jsd_beta": 0.5,
    "clip_tau": 0.05,
}
# A pedagogical job's options (jobs/pedagogical.py), only listed for such a job.
PEDAGOGICAL_DEFAULTS = {
    "threshold": 0.05,
    "max_rank": None,
    "temperature": 0,
    "top_p": 1,
    "seed": 0,
    "max_new_tokens": 128,
    "sweep": None,
}


def settings_of(options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every setting of a job, named: {"name", "value", "default"} (`default`: the upload left
    it unset and the value shown is the default). Options the page does not know come last."""
    # A pedagogical job keeps the student's sampling as one object (`generation`): each of its
    # settings is shown by its own name, as the upload form names them.
    generation = options.get("generation")
    if isinstance(generation, dict):
        options = {**{k: v for k, v in options.items() if k != "generation"}, **generation}
    known = dict(DEFAULTS)
    if options.get("mode") == "pedagogical":
        known.update(PEDAGOGICAL_DEFAULTS)
    out = []
    for name, default in known.items():
        given = options.get(name)
        value = given if given is not None else default
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        out.append({"name": name, "value": "none" if value is None else str(value), "default": given is None})
    out += [
        {"name": name, "value": str(value), "default": False}
        for name, value in options.items()
        if name not in known and value is not None
    ]
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


class _Answer:
    """What the sentence needs, added up one digest at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.agreement: list[float] = []
        self.top5: list[float] = []
        self.firsts: dict[bool | None, list[int]] = {None: [], True: [], False: []}
        self.diverged = 0
        self.verdicts = self.right = 0
        # multi-turn or reasoning lines (summary.segments, #25): tokens and reverse KL per segment
        self.segments: dict[str, list[float]] = {"thinking": [0, 0.0], "answer": [0, 0.0]}

    def add(self, d: dict[str, Any]) -> None:
        self.count += 1
        if d.get("agreement_rate") is not None:
            self.agreement.append(d["agreement_rate"])
        if d.get("kl_top_5pct") is not None:
            self.top5.append(d["kl_top_5pct"])
        if d.get("first_divergence") is not None:
            self.diverged += 1
            self.firsts[None].append(d["first_divergence"])
            if d.get("correct") is not None:
                self.firsts[bool(d["correct"])].append(d["first_divergence"])
        if d.get("correct") is not None:
            self.verdicts += 1
            self.right += bool(d["correct"])
        # the digest's segments (pipeline/digest.py segment_figures): tokens and KL per token
        for name, figures in (d.get("segments") or {}).items():
            if name in self.segments and figures and figures.get("tokens"):
                self.segments[name][0] += figures["tokens"]
                self.segments[name][1] += (figures.get("reverse_kl_mean") or 0.0) * figures["tokens"]

    def sentence(self) -> str | None:
        if not self.count:
            return None
        n = self.count
        parts = [f"Across {n} trajector{'y' if n == 1 else 'ies'}"]
        if (agree := _median(self.agreement)) is not None:
            parts[0] += (
                f", the teacher's top choice is the student's token at a median {_pct(agree)} of tokens"
            )
        if self.diverged:
            first = _median(self.firsts[None])
            parts.append(
                f"{_pct(self.diverged / n)} of the trajectories diverge, first at token {first:g} (median)"
            )
        else:
            parts.append("no trajectory diverges")
        if (top := _median(self.top5)) is not None:
            parts.append(f"the top 5% of tokens carry {_pct(top)} of the reverse KL (median)")
        text = "; ".join(parts) + "."
        if self.verdicts:
            text += f" {_pct(self.right / self.verdicts)} of {self.verdicts} with a verdict are correct"
            right, wrong = _median(self.firsts[True]), _median(self.firsts[False])
            if right is not None and wrong is not None:
                text += f"; correct ones first diverge at token {right:g}, incorrect ones at {wrong:g}"
            text += "."
        (think_tokens, think_kl), (answer_tokens, answer_kl) = self.segments.values()
        if think_tokens and answer_tokens:
            text += (
                f" Thinking carries {think_kl / think_tokens:.3f} nats per token over {think_tokens} tokens,"
                f" the answer {answer_kl / answer_tokens:.3f} over {answer_tokens}."
            )
        return text


def dataset_answer(digests: Iterable[dict[str, Any]]) -> str | None:
    """The job's answer in one sentence (or two with verdicts, three with thinking marked): how
    often the teacher agrees, how many trajectories diverge and where, how concentrated the
    signal is, and, with verdicts, how the correct ones differ. None before any line is done."""
    answer = _Answer()
    for d in digests:
        answer.add(d)
    return answer.sentence()
