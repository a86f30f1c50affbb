"""Assemble one analysis (the JSON of `POST /api/analyze`, docs/metrics.md) from contexts and replay arrays.

Decoding token strings and the summary live here; no tensors, no HTTP.
"""

from __future__ import annotations

import math
from typing import Any

from vrollout.inputs.trajectories import Trajectory
from vrollout.metrics.objectives import ObjectiveSpec, quadrants, step_objectives, summarize_objectives
from vrollout.metrics.signal import MIN_WINDOW, concentration, divergence_kind, fork_matters, rejoin_run
from vrollout.pipeline.backend import Models
from vrollout.pipeline.contexts import Contexts
from vrollout.pipeline.replay import ReplayResult
from vrollout.pipeline.segments import segments
from vrollout.pipeline.turns import scored_flags, turn_ends, turn_keys, turn_summaries
from vrollout.schema.analysis import Analysis, Side, Step, Summary, TeacherSide, TopToken, TrajectoryRecord
from vrollout.verdicts.answers import verdict
from vrollout.verdicts.math_check import DEADLINE_S

LN2 = math.log(2.0)
# A context step (`scored: false`: a token the student did not write, a tool's or a user's) keeps
# its token, position, turn and the teacher's top-1 there (the virtual rollout is drawn at every
# position); every figure of the student's or the teacher's at its token is null, its top-k lists
# empty: nothing there is the student's to be scored.
CONTEXT_NULLS = (
    "student_logprob", "teacher_logprob", "advantage", "reverse_kl", "forward_kl", "student_entropy",
    "teacher_entropy", "agree", "teacher_rank", "teacher_continuation", "teacher_mass_on_student_topk",
    "correction_in_student_topk", "divergence_kind", "fork_matters", "objectives", "uncertain",
    "reverse_kl_interval", "forward_kl_interval", "student_entropy_interval", "teacher_entropy_interval",
)  # fmt: skip


def token_strings(tokenizer: Any, ids: set[int]) -> dict[int, str]:
    """Each distinct id decoded alone, once (special tokens kept visible)."""
    order = sorted(ids)
    texts = tokenizer.batch_decode([[i] for i in order], skip_special_tokens=False)
    return dict(zip(order, texts, strict=True))


def _count(steps: list[Step], name: str, value: Any) -> int:
    return sum(1 for s in steps if s.get(name) == value)


def summarize(steps: list[Step], *, classified: bool = False, recovered: bool = False) -> Summary:
    """Dataset-free numbers for one trajectory. Positions are 0-based indices into the response.
    `classified`: the divergences carry `divergence_kind` (continuations were asked for);
    `recovered`: their forks carry `fork_matters` (recovery ran too). Only scored steps count
    (the context steps of a conversation are not the student's)."""
    steps = scored_steps(steps)
    n = len(steps)
    rkl = [s["reverse_kl"] for s in steps]
    total = sum(rkl)
    divergent = [s["position"] for s in steps if not s["agree"]]
    at_divergences = sum(s["reverse_kl"] for s in steps if not s["agree"])
    return {
        "tokens": n,
        "agreement_rate": (n - len(divergent)) / n if n else None,
        "divergences": len(divergent),
        "first_divergence": divergent[0] if divergent else None,
        "reverse_kl_total": total,
        "reverse_kl_mean": total / n if n else None,
        "reverse_kl_total_bits": total / LN2,
        "reverse_kl_mean_bits": total / n / LN2 if n else None,
        "reverse_kl_max": max(rkl) if rkl else None,
        "reverse_kl_share_at_divergences": at_divergences / total if total > 0 else None,
        "forward_kl_total": sum(s["forward_kl"] for s in steps),
        "advantage_total": sum(s["advantage"] for s in steps),
        "advantage_mean": sum(s["advantage"] for s in steps) / n if n else None,
        "student_logprob_total": sum(s["student_logprob"] for s in steps),
        "teacher_logprob_total": sum(s["teacher_logprob"] for s in steps),
        "concentration": concentration(rkl),
        "concentration_abs_advantage": concentration([abs(s["advantage"]) for s in steps]),
        **teachability_summary(steps),
        **divergence_summary(steps, len(divergent), classified, recovered),
    }


def scored_steps(steps: list[Step]) -> list[Step]:
    """The steps of tokens the student wrote (steps stored before `scored` existed all are)."""
    return [s for s in steps if s.get("scored", True)]


def summary_parts(steps: list[Step], classified: bool, recovered: bool) -> dict[str, Any]:
    """`summary.turns` (per assistant turn; null for token-level lines) and `summary.segments`
    (the summary's figures over the thinking and over the answer; null where nothing marks
    reasoning)."""
    parts = None
    if any(s.get("segment") is not None for s in steps):
        parts = {
            name: summarize(
                [s for s in steps if s.get("segment") == name], classified=classified, recovered=recovered
            )
            for name in ("thinking", "answer")
        }
    return {"turns": turn_summaries(steps), "segments": parts}


def teachability_summary(steps: list[Step]) -> dict[str, Any]:
    """The mean teacher mass on the student's top-k, and the divergences whose correction is in
    it; null where the steps do not carry them (top_k = 0, or stored before they existed)."""
    masses = [m for s in steps if (m := s.get("teacher_mass_on_student_topk")) is not None]
    return {
        "teacher_mass_on_student_topk_mean": sum(masses) / len(masses) if masses else None,
        "divergences_in_student_topk": _count(steps, "correction_in_student_topk", True) if masses else None,
    }


def divergence_summary(
    steps: list[Step], divergences: int, classified: bool, recovered: bool
) -> dict[str, Any]:
    """Counts of surface and fork divergences (null without continuations) and of forks that
    matter (null without recovery as well)."""
    if not classified:
        return dict.fromkeys(
            ("divergences_classified", "divergences_surface", "divergences_fork", "forks_that_matter")
        )
    surface, fork = _count(steps, "divergence_kind", "surface"), _count(steps, "divergence_kind", "fork")
    return {
        "divergences_classified": surface + fork,
        "divergences_surface": surface,
        "divergences_fork": fork,
        "forks_that_matter": _count(steps, "fork_matters", True) if recovered else None,
    }


def classify_steps(
    steps: list[Step],
    response_ids: list[int],
    top_k: int,
    continuation_tokens: int,
    recovery: dict[str, Any] | None,
) -> tuple[bool, bool]:
    """Add the teachability and surface-or-fork fields to each step (docs/metrics.md); returns
    whether the divergences were classified and whether forks were checked against recovery."""
    classified = continuation_tokens >= MIN_WINDOW
    recovered = classified and recovery is not None
    success = {p["position"]: p["success"] for p in recovery["points"]} if recovery else {}
    ends = turn_ends([s.get("scored", True) for s in steps])
    for t, step in enumerate(steps):
        divergent = step.get("scored", True) and not step["agree"]
        continuation = step["teacher_continuation"]
        kind = None
        if divergent and classified and continuation is not None:
            # re-joining is looked for within the divergence's turn, not in the context after it,
            # and within the window after it (`rejoin_position` reads no further): a copy of that
            # much per divergence, not of the response before it
            stop = min(ends[t], t + continuation_tokens + rejoin_run(continuation_tokens))
            kind = divergence_kind(continuation["token_ids"], response_ids[t:stop], 0, continuation_tokens)
        in_topk = None
        if divergent and top_k > 0:
            in_topk = any(alt["token_id"] == step["teacher_top1_id"] for alt in step["student_topk"])
        step["correction_in_student_topk"] = in_topk
        step["divergence_kind"] = kind
        step["fork_matters"] = (
            fork_matters(t, len(steps), success, recovery["student_success"])
            if kind == "fork" and recovered and recovery is not None
            else None
        )
    return classified, recovered


def model_sides(pair: Models, ctx: Contexts) -> dict[str, Side | TeacherSide]:
    """An analysis's `student` and `teacher`: each model and its context as it saw it."""
    return {
        "student": {
            "model": pair.student.name,
            "context_ids": ctx.student_ids,
            "context_text": ctx.student_text,
        },
        "teacher": {
            "model": pair.teacher.name,
            "context_ids": ctx.teacher_ids,
            "context_text": ctx.teacher_text,
            "privileged": ctx.privileged,
            "context_kind": ctx.context_kind,  # which text `privileged` is (inputs.teacher_context)
            "sibling": ctx.sibling,
            "shared_weights": pair.shared,
        },
    }


def trajectory_record(traj: Trajectory) -> TrajectoryRecord:
    """What an analysis keeps of the line beyond its ids: format, id, verdict inputs, meta; a
    conversation's messages (what each step's `turn` indexes: the page names each turn's role)."""
    record: TrajectoryRecord = {
        "format": traj.format,
        "id": traj.id,
        "reference_answer": traj.reference_answer,
        "score": traj.score,
        "correct": traj.correct,
        "step": traj.step,
        "meta": traj.meta,
        "prompt": traj.messages,
        "rendered": traj.rendered,
    }
    if traj.conversation is not None:
        record["conversation"] = traj.conversation
    return record


def build_analysis(
    *,
    analysis_id: str,
    created_at: str,
    pair: Models,
    traj: Trajectory,
    ctx: Contexts,
    response_ids: list[int],
    result: ReplayResult,
    top_k: int,
    generation: dict[str, Any] | None,
    continuations: list[list[int] | None] | None = None,
    continuation_tokens: int = 0,
    extra: dict[str, Any] | None = None,
    verdict_deadline_s: float = DEADLINE_S,
    objectives: ObjectiveSpec | None = None,
) -> Analysis:
    """The analysis (schema.analysis.Analysis) of one replayed response; `extra` adds the
    backend's keys (a server's `noise`, ...), `recovery` and `job`. `objectives`: each step's
    distillation objectives (those the backend did not compute are null), their summary and
    TIP's quadrants (`add_objectives`). `continuations`: per position, the teacher's (None at a
    context token). Context tokens of a conversation (`ctx.response_mask` 0) get `scored: false`
    and null figures (`CONTEXT_NULLS`); the summaries count the scored steps only."""
    tok = pair.student.tokenizer
    wanted = set(response_ids) | set(result.teacher_top1_id)
    for row in result.teacher_topk_ids + result.student_topk_ids:
        wanted.update(row)
    text_of = token_strings(tok, wanted)

    def topk(ids: list[int], logprobs: list[float]) -> list[TopToken]:
        return [
            {"token_id": i, "token": text_of[i], "logprob": lp} for i, lp in zip(ids, logprobs, strict=True)
        ]

    masses = result.teacher_mass_on_student_topk()
    scored = scored_flags(ctx.response_mask, len(response_ids))
    turns = ctx.turns or [None] * len(response_ids)
    segment = segments([text_of[i] for i in response_ids], turn_keys(scored, ctx.turns))
    steps: list[Step] = []
    for t, token in enumerate(response_ids):
        top1 = result.teacher_top1_id[t]
        continuation = None
        if continuations is not None and (ids := continuations[t]) is not None:
            continuation = {"token_ids": ids, "text": tok.decode(ids, skip_special_tokens=False)}
        steps.append(
            {
                "position": t,
                "token_id": token,
                "token": text_of[token],
                "scored": scored[t],
                "turn": turns[t],
                "segment": segment[t],
                "student_logprob": result.student_logprob[t],
                "teacher_logprob": result.teacher_logprob[t],
                "advantage": result.teacher_logprob[t] - result.student_logprob[t],
                "reverse_kl": result.reverse_kl[t],
                "forward_kl": result.forward_kl[t],
                "student_entropy": result.student_entropy[t],
                "teacher_entropy": result.teacher_entropy[t],
                "teacher_top1_id": top1,
                "teacher_top1": text_of[top1],
                # rank 1: no token above the student's (a tie with the top-1 agrees; the top-1 id
                # is then the first tied one, maybe another token)
                "agree": result.teacher_rank[t] == 1,
                "teacher_rank": result.teacher_rank[t],
                "teacher_topk": topk(result.teacher_topk_ids[t], result.teacher_topk_logprobs[t]),
                "student_topk": topk(result.student_topk_ids[t], result.student_topk_logprobs[t]),
                "teacher_continuation": continuation,
                "teacher_mass_on_student_topk": masses[t] if top_k > 0 else None,
            }
        )
    extra = dict(extra or {})
    for name, values in extra.pop("per_step", {}).items():  # a server's noise (metrics/intervals.py)
        for step, value in zip(steps, values, strict=True):
            step[name] = value
    if continuations is None:
        continuation_tokens = 0
    flags = classify_steps(steps, response_ids, top_k, continuation_tokens, (extra or {}).get("recovery"))
    rollout = result.teacher_top1_id
    analysis: Analysis = {
        "id": analysis_id,
        "created_at": created_at,
        **model_sides(pair, ctx),
        "response_ids": response_ids,
        "response_mask": [int(x) for x in scored],
        "response_text": tok.decode(response_ids, skip_special_tokens=False),
        "retokenized": ctx.retokenized,
        "steps": steps,
        "virtual_rollout": {
            "token_ids": rollout,
            "text": tok.decode(rollout, skip_special_tokens=False),
        },
        "summary": {
            **summarize(steps, classified=flags[0], recovered=flags[1]),
            **summary_parts(steps, *flags),
        },
        # Is the response right (docs/metrics.md, "Verdicts"): the line's own `correct`, else checked
        # (a conversation's answer is its last assistant message, not the tool turns before it)
        "verdict": verdict(
            answer_text(traj, tok, response_ids),
            traj.reference_answer,
            traj.correct,
            verdict_deadline_s,
            question=ctx.student_text,
        ),
        "trajectory": trajectory_record(traj),
        "top_k": top_k,
        "continuation_tokens": continuation_tokens,
        "generation": generation,
        "backend": "local",
        "notes": ctx.notes,
        **(extra or {}),
    }
    if objectives is not None:
        add_objectives(analysis, result, objectives)
    for step in steps:
        if not step["scored"]:
            blank_context_step(step)
    return analysis


def answer_text(traj: Trajectory, tokenizer: Any, response_ids: list[int]) -> str:
    """What the verdict checks: the conversation's final answer where the line has one, else the
    response decoded."""
    if traj.final_answer is not None:
        return traj.final_answer
    return tokenizer.decode(response_ids, skip_special_tokens=True)


def blank_context_step(step: Step) -> None:
    """A context step as the analysis shows it: null figures, empty top-k lists (`CONTEXT_NULLS`)."""
    for name in CONTEXT_NULLS:
        if name in step:
            step[name] = None  # type: ignore[literal-required]
    step["teacher_topk"] = []
    step["student_topk"] = []


def add_objectives(analysis: Analysis, result: ReplayResult, spec: ObjectiveSpec) -> None:
    """Each step's `objectives`, `summary.objectives`, `summary.quadrants` and the analysis's
    `objective_options` (docs/objectives.md)."""
    for t, step in enumerate(analysis["steps"]):
        computed = {name: values[t] for name, values in result.objectives.items()}
        step["objectives"] = step_objectives(  # type: ignore[typeddict-item]
            spec, step["student_logprob"], step["teacher_logprob"], computed
        )
    steps = scored_steps(analysis["steps"])
    summary = analysis["summary"]
    summary["objectives"] = summarize_objectives(steps, spec)  # type: ignore[arg-type,typeddict-item]
    summary["quadrants"] = quadrants(  # type: ignore[typeddict-item]
        [s["student_entropy"] for s in steps],
        [s["reverse_kl"] for s in steps],
        spec.entropy_threshold,
        spec.divergence_threshold,
    )
    analysis["objective_options"] = spec.record()  # type: ignore[typeddict-item]
