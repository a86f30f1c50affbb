"""The pedagogical rollout, independent of where the models run.

The student drives; at each step a backend's `Stepper` gives the student's proposal and the
teacher's verdict (`rules.pedagogical_step`), and the token taken is fed back to both models.
This module holds the loop, the summary every backend returns, and the threshold sweep. No
torch, no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from vrollout.pipeline.backend import Models
from vrollout.pipeline.replay import Progress, _no_progress
from vrollout.rules import Policy
from vrollout.verdicts.answers import answer_matches


class Stepper(Protocol):
    """Both models decoding one rollout: a step at the current prefix, then the token taken."""

    def step(self, i: int) -> dict[str, Any]:
        """Step `i` at the current prefix (a `rules.pedagogical_step` record)."""
        ...

    def take(self, token: int) -> None:
        """Append the token taken to both models' prefixes."""
        ...


def rollout_steps(
    stepper: Stepper, policy: Policy, eos: set[int], progress: Progress = _no_progress
) -> list[dict[str, Any]]:
    """Steps until an end-of-sequence token is taken (kept) or `max_new_tokens` are."""
    steps: list[dict[str, Any]] = []
    for i in range(policy.max_new_tokens):
        step = stepper.step(i)
        steps.append(step)
        progress("pedagogical", i + 1, policy.max_new_tokens)
        if step["token"] in eos:
            break
        stepper.take(step["token"])
    return steps


def summarize_rollout(
    pair: Models, steps: list[dict[str, Any]], policy: Policy, reference: str | None
) -> dict[str, Any]:
    """The rollout's JSON: the tokens taken, who chose each, the interventions, the answer."""
    tok = pair.student.tokenizer
    ids = [s["token"] for s in steps]
    text = tok.decode(ids, skip_special_tokens=False)
    interventions = [
        {
            "position": i,
            "proposal_id": s["proposal"],
            "proposal": tok.decode([s["proposal"]]),
            "proposal_teacher_prob": s["proposal_teacher_prob"],
            "proposal_teacher_rank": s["proposal_teacher_rank"],
            "substitute_id": s["token"],
            "substitute": tok.decode([s["token"]]),
            "student_surprisal": -s["student_logprob"],
        }
        for i, s in enumerate(steps)
        if s["intervened"]
    ]
    return {
        "policy": vars(policy).copy(),
        "response_ids": ids,
        "response_text": text,
        "tokens": [
            {
                "position": i,
                "token_id": s["token"],
                "token": tok.decode([s["token"]]),
                "source": "teacher" if s["intervened"] else "student",
                "student_logprob": s["student_logprob"],
                "teacher_logprob": s["teacher_logprob"],
            }
            for i, s in enumerate(steps)
        ],
        "interventions": interventions,
        "num_interventions": len(interventions),
        "reference_answer": reference,
        "reached_reference": (
            answer_matches(tok.decode(ids, skip_special_tokens=True), reference) if reference else None
        ),
    }


def threshold_sweep(
    rollout: Callable[[Policy], dict[str, Any]],
    policy: Policy,
    thresholds: list[float],
    progress: Progress = _no_progress,
) -> list[dict[str, Any]]:
    """Interventions needed vs success: `rollout(policy)` once per threshold (same seed)."""
    rows = []
    for i, threshold in enumerate(thresholds):
        run = rollout(Policy(**{**vars(policy), "threshold": threshold}))
        rows.append(
            {
                "threshold": threshold,
                "num_interventions": run["num_interventions"],
                "tokens": len(run["response_ids"]),
                "reached_reference": run["reached_reference"],
                "response_text": run["response_text"],
            }
        )
        progress("sweep", i + 1, len(thresholds))
    return rows
