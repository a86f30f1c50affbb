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
) -> dict[str, Any]:
    """Run the teacher to the end from each chosen prefix and mark which reach the answer.
    `continue_from`: the teacher's greedy continuations (a backend's `continuations`)."""
    tok = pair.teacher.tokenizer
    positions, stride = recovery_positions(len(response), divergences)
    continuations = continue_from(
        teacher_context, response, max_new_tokens, progress, positions=positions, stage="recovery"
    )
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
    total = sum(reverse_kl)
    after = sum(reverse_kl[(last + 1 if last is not None else 0) :])
    return {
        "reference_answer": reference,
        "max_new_tokens": max_new_tokens,
        "stride": stride,
        "points": points,
        "student_success": student_success,
        "last_recoverable": last,
        "reverse_kl_share_after_last_recoverable": after / total if total > 0 else None,
    }
