"""The student's turns in a response: which tokens are scored, where each turn ends, and the
per-turn figures of `summary.turns` (docs/metrics.md, "Conversations").

A response of a conversation holds every token after the prompt: the student's assistant turns
(mask 1) and the context between them (tool results, user turns, headers: mask 0). A turn here is
a run of consecutive student tokens. Continuations and recovery start only at a student token
and stop at the end of its turn where context follows it: the teacher cannot invent a tool's
answer. Pure functions over lists: no tokenizer, no torch.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from vrollout.pipeline.replay import ReplayResult


def scored_flags(mask: list[int] | None, length: int) -> list[bool]:
    """Each response token is scored where the mask is 1 (no mask: every token)."""
    return [True] * length if mask is None else [bool(m) for m in mask]


def all_scored(mask: list[int] | None) -> bool:
    return mask is None or all(mask)


def continuation_limits(scored: list[bool]) -> list[int | None]:
    """For each position t: how many tokens a continuation from t may have, the tokens left in
    its turn (its run of scored tokens) where context follows the turn; None where nothing
    follows it (a single-turn line, a last turn that ends the response: no limit) and at a context
    token (no continuation starts there)."""
    n = len(scored)
    limits: list[int | None] = [None] * n
    end = n  # where the run holding t ends (exclusive)
    for t in range(n - 1, -1, -1):
        if not scored[t]:
            end = t
            continue
        limits[t] = end - t if end < n else None
    return limits


def capped(continuation: list[int], limit: int | None) -> list[int]:
    """A continuation cut at its turn's end (`continuation_limits`)."""
    return continuation if limit is None else continuation[:limit]


def turn_ends(scored: list[bool]) -> list[int]:
    """For each position: the end (exclusive) of the run of equal scored-ness holding it."""
    n = len(scored)
    ends = [n] * n
    for t in range(n - 2, -1, -1):
        ends[t] = ends[t + 1] if scored[t] == scored[t + 1] else t + 1
    return ends


def turn_keys(scored: list[bool], turns: list[int | None] | None) -> list[Hashable | None]:
    """Which turn each scored token belongs to (None for a context token): its message index
    where the turns are known, else the number of its run of scored tokens (a token-level line)."""
    if turns is not None:
        return [turn if ok else None for ok, turn in zip(scored, turns, strict=True)]
    keys: list[Hashable | None] = []
    run = -1
    for t, ok in enumerate(scored):
        if ok and (t == 0 or not scored[t - 1]):
            run += 1
        keys.append(("run", run) if ok else None)
    return keys


def turn_summaries(steps: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """`summary.turns`: per assistant turn (message index, in order) its scored tokens, total
    reverse KL, divergences and agreement rate; None where no step knows its turn (token-level
    lines)."""
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for step in steps:
        if step.get("scored", True) and step.get("turn") is not None:
            by_turn.setdefault(step["turn"], []).append(step)
    if not by_turn:
        return None
    out = []
    for index, members in by_turn.items():
        divergences = sum(1 for s in members if not s["agree"])
        out.append(
            {
                "message_index": index,
                "tokens": len(members),
                "reverse_kl": sum(s["reverse_kl"] for s in members),
                "divergences": divergences,
                "agreement_rate": (len(members) - divergences) / len(members),
            }
        )
    return out


def student_positions(result: ReplayResult, scored: list[bool]) -> ReplayResult:
    """The per-step arrays of `result` at the scored positions only (what the noise floor compares).
    A field left empty stays empty (a shared-weights teacher's bare replay, read from the
    student's pass, fills only the log-probs and KLs: `preflight.student_as_teacher`)."""
    piece = ReplayResult()
    for name in result.step_fields():
        values = getattr(result, name)
        if values:
            getattr(piece, name).extend(v for v, ok in zip(values, scored, strict=True) if ok)
    piece.objectives = {
        name: [v for v, ok in zip(values, scored, strict=True) if ok]
        for name, values in result.objectives.items()
    }
    return piece
