"""Recovery: from which prefixes of the student's trajectory can the teacher still succeed?

The teacher continues greedily from a set of prefixes to the end (at most `max_new_tokens`) and
each finished text is checked against the reference answer. Where the continuations are decoded
is the backend's business (`Backend.continuations`); this module only chooses the prefixes and
judges the texts. No torch, no HTTP, no storage.
"""

from __future__ import annotations

import math
from typing import Any

from vrollout.pipeline.backend import ContinueFrom, Models
from vrollout.pipeline.replay import Progress, _no_progress
from vrollout.pipeline.turns import capped, continuation_limits
from vrollout.verdicts.answers import answer_matches

ALL_PREFIXES_UP_TO = 64  # responses up to this many tokens: every prefix is tried
TARGET_POINTS = 64  # longer ones: a stride giving about this many, plus every divergence d and d + 1


def recovery_positions(T: int, divergences: list[int]) -> tuple[list[int], int]:
    """Prefix lengths to try and the stride used (1 = every prefix). Every divergence d and the
    prefix just after it, d + 1 (when d + 1 < T), are always tried: whether a fork matters
    compares the two (`signal.fork_matters`), measured rather than read off neighbours."""
    if T <= ALL_PREFIXES_UP_TO:
        return list(range(T)), 1
    stride = math.ceil(T / TARGET_POINTS)
    around = {t for d in divergences for t in (d, d + 1) if t < T}
    return sorted(set(range(0, T, stride)) | around), stride


def turn_continuations(
    continue_from: ContinueFrom,
    context: list[int],
    response: list[int],
    k: int,
    scored: list[bool],
    progress: Progress = _no_progress,
    stage: str = "continuations",
) -> list[list[int] | None]:
    """The teacher's continuation from every position, each stopped at the end of its turn where
    context follows it (`turns.continuation_limits`); None at a context token, where none starts.
    A response that is all the student's is asked for whole, as before conversations existed."""
    if all(scored):
        return list(continue_from(context, response, k, progress, stage=stage))
    limits = continuation_limits(scored)
    positions = [t for t, ok in enumerate(scored) if ok]
    decoded = continue_from(context, response, k, progress, positions=positions, stage=stage)
    out: list[list[int] | None] = [None] * len(response)
    for t, continuation in zip(positions, decoded, strict=True):
        out[t] = capped(continuation, limits[t])
    return out


def recovery(
    pair: Models,
    teacher_context: list[int],
    response: list[int],
    reverse_kl: list[float],
    divergences: list[int],
    reference: str,
    max_new_tokens: int,
    continue_from: ContinueFrom,
    progress: Progress = _no_progress,
    scored: list[bool] | None = None,
) -> dict[str, Any]:
    """Run the teacher to the end from each chosen prefix and mark which reach the answer.
    `continue_from`: the teacher's greedy continuations (a backend's `continuations`). `scored`:
    which tokens the student wrote (a conversation's); the teacher takes over only at those, and
    stops at the end of the turn it takes over in."""
    tok = pair.teacher.tokenizer
    scored = scored or [True] * len(response)
    limits = continuation_limits(scored)
    positions, stride = recovery_positions(len(response), divergences)
    positions = [t for t in positions if scored[t]]
    continuations = [
        capped(continuation, limits[t])
        for t, continuation in zip(
            positions,
            continue_from(
                teacher_context, response, max_new_tokens, progress, positions=positions, stage="recovery"
            ),
            strict=True,
        )
    ]
    points = []
    for t, cont in zip(positions, continuations, strict=True):
        text = tok.decode(response[:t] + cont, skip_special_tokens=True)
        points.append(
            {
                "position": t,
                "success": answer_matches(text, reference),
                "continuation": tok.decode(cont, skip_special_tokens=False),
            }
        )
    student_success = answer_matches(tok.decode(response, skip_special_tokens=True), reference)
    recoverable = [p["position"] for p in points if p["success"]]
    last = len(response) - 1 if student_success else (max(recoverable) if recoverable else None)
    kl = [value if ok else 0.0 for value, ok in zip(reverse_kl, scored, strict=True)]  # the student's
    total = sum(kl)
    after = sum(kl[(last + 1 if last is not None else 0) :])
    return {
        "reference_answer": reference,
        "max_new_tokens": max_new_tokens,
        "stride": stride,
        "points": points,
        "student_success": student_success,
        "last_recoverable": last,
        "reverse_kl_share_after_last_recoverable": after / total if total > 0 else None,
    }
