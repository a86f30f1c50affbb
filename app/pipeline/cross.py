"""The analysis JSON of a teacher with another tokenizer (docs/metrics.md, "Teachers with another
tokenizer"), from an alignment (`pipeline.align`) and each model's numbers over its own tokens.

Torch-free: `local/cross.py` computes the numbers, this module attributes them to the student's
tokens and builds the same analysis object as `pipeline.assembly.build_analysis`, plus `alignment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vrollout.errors import BadTrajectory
from vrollout.inputs.trajectories import Trajectory
from vrollout.pipeline.align import Alignment, align
from vrollout.pipeline.assembly import (
    answer_text,
    blank_context_step,
    model_sides,
    summarize,
    summary_parts,
    token_strings,
    trajectory_record,
)
from vrollout.pipeline.backend import Models
from vrollout.pipeline.contexts import Contexts
from vrollout.pipeline.segments import segments
from vrollout.pipeline.turns import scored_flags, turn_keys
from vrollout.verdicts.answers import verdict
from vrollout.verdicts.math_check import DEADLINE_S

ESTIMATED = ["reverse_kl", "forward_kl", "teacher_mass_on_student_topk"]
NOT_ACROSS = (
    "cannot be defined across two vocabularies: the teacher ({teacher}) has another tokenizer "
    "than the student ({student}), so its tokens cannot be spliced into the student's sequence "
    "(docs/metrics.md, 'Teachers with another tokenizer')"
)


def refuse_across(pair: Models, what: str, field_name: str | None = None) -> None:
    """A clear 422 for an option that needs one shared vocabulary, on a cross-tokenizer pair."""
    if pair.cross_tokenizer:
        message = f"{what} " + NOT_ACROSS.format(teacher=pair.teacher.name, student=pair.student.name)
        raise BadTrajectory(message, **({"field": field_name} if field_name else {}))


@dataclass
class SideNumbers:
    """One model's numbers over its own tokens (teacher-forced), each list one entry per token."""

    logprob: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    top1_id: list[int] = field(default_factory=list)
    rank: list[int] = field(default_factory=list)
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_logprobs: list[list[float]] = field(default_factory=list)


@dataclass
class CrossResult:
    student: SideNumbers
    teacher: SideNumbers
    # Per span (None where a side has no token there): the estimates at the span's start.
    reverse_kl: list[float | None]
    forward_kl: list[float | None]
    mass_on_student_topk: list[float | None]
    unmatched_student_mass: list[float | None]
    unmatched_teacher_mass: list[float | None]
    teacher_strings: dict[int, str]  # every teacher id the analysis shows, as text
    correction_in_student_topk: list[
        bool | None
    ]  # per span: the teacher's top-1 spelled in the student's top-k
    shared_vocabulary: int  # how many spellings both vocabularies have


def build_cross_analysis(
    *,
    analysis_id: str,
    created_at: str,
    pair: Models,
    traj: Trajectory,
    ctx: Contexts,
    alignment: Alignment,
    result: CrossResult,
    top_k: int,
    generation: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
    verdict_deadline_s: float = DEADLINE_S,
) -> dict[str, Any]:
    """The analysis: per student token, its own numbers exactly, the teacher's attributed at span
    ends, the comparisons (estimates) at span starts; `alignment` holds the spans."""
    s, t = result.student, result.teacher
    response_ids = alignment.student_ids
    wanted = set(response_ids) | {i for row in s.topk_ids for i in row}
    text_of = token_strings(pair.student.tokenizer, wanted)
    t_text = result.teacher_strings

    def topk(ids: list[int], logprobs: list[float], names: dict[int, str]) -> list[dict[str, Any]]:
        return [
            {"token_id": i, "token": names[i], "logprob": lp} for i, lp in zip(ids, logprobs, strict=True)
        ]

    scored = scored_flags(ctx.response_mask, len(response_ids))
    turns = ctx.turns or [None] * len(response_ids)
    segment = segments([text_of[i] for i in response_ids], turn_keys(scored, ctx.turns))
    steps: list[dict[str, Any]] = []
    spans: list[dict[str, Any]] = []
    rollout_ids: list[int] = []
    for n, span in enumerate(alignment.spans):
        (s0, s1), (t0, t1) = span.student, span.teacher
        s_total = math.fsum(s.logprob[s0:s1])
        t_total = sum(t.logprob[t0:t1]) if t1 - t0 == 1 else math.fsum(t.logprob[t0:t1])
        has_teacher = t1 > t0
        agree = has_teacher and t.rank[t0] == 1  # ties with the top-1 agree (as `assembly`)
        if has_teacher:
            rollout_ids.append(t.top1_id[t0])
        for k in range(s0, s1):
            start, end = k == s0, k == s1 - 1
            # Attribution (docs): inside a span the teacher's log-prob is the student's own (advantage
            # 0); the span's last token carries the rest, so sums over whole spans are exact.
            if end:
                inside = s.logprob[s0:k]
                teacher_lp = t_total - math.fsum(inside) if inside else t_total
            else:
                teacher_lp = s.logprob[k]
            compared = start and has_teacher
            steps.append(
                {
                    "position": k,
                    "token_id": response_ids[k],
                    "token": text_of[response_ids[k]],
                    "scored": scored[k],
                    "turn": turns[k],
                    "segment": segment[k],
                    "student_logprob": s.logprob[k],
                    "teacher_logprob": teacher_lp,
                    "advantage": teacher_lp - s.logprob[k],
                    "reverse_kl": (result.reverse_kl[n] or 0.0) if start else 0.0,
                    "forward_kl": (result.forward_kl[n] or 0.0) if start else 0.0,
                    "student_entropy": s.entropy[k],
                    "teacher_entropy": t.entropy[t0] if compared else None,
                    "teacher_top1_id": t.top1_id[t0] if compared else None,
                    "teacher_top1": t_text[t.top1_id[t0]] if compared else "",
                    "agree": agree if compared else True,
                    "teacher_rank": t.rank[t0] if compared else None,
                    "teacher_topk": topk(t.topk_ids[t0], t.topk_logprobs[t0], t_text) if compared else [],
                    "student_topk": topk(s.topk_ids[k], s.topk_logprobs[k], text_of),
                    "teacher_continuation": None,
                    "teacher_mass_on_student_topk": (
                        result.mass_on_student_topk[n] if compared and top_k > 0 else None
                    ),
                    "correction_in_student_topk": (
                        result.correction_in_student_topk[n] if compared and not agree and top_k > 0 else None
                    ),
                    "divergence_kind": None,
                    "fork_matters": None,
                    "span": n,
                    "span_start": start,
                }
            )
        spans.append(
            {
                "student": [s0, s1],
                "teacher": [t0, t1],
                "chars": [span.start, span.end],
                "text": alignment.text[span.start : span.end],
                "student_logprob": s_total,
                "teacher_logprob": t_total,
                "advantage": t_total - s_total,
                "differs": span.differs,
                "special": span.special,
                "teacher_top1": t_text[t.top1_id[t0]] if has_teacher else None,
                "agree": agree,
                "reverse_kl": result.reverse_kl[n],
                "forward_kl": result.forward_kl[n],
                "unmatched_student_mass": result.unmatched_student_mass[n],
                "unmatched_teacher_mass": result.unmatched_teacher_mass[n],
            }
        )
    summary = {**summarize(steps), **summary_parts(steps, False, False)}  # type: ignore[arg-type]
    for step in steps:
        if not step["scored"]:
            blank_context_step(step)  # type: ignore[arg-type]
    summary["reverse_kl_estimate"] = True  # a lower bound over shared spellings (docs)
    summary["spans"] = len(spans)
    summary["spans_differ"] = sum(1 for x in spans if x["differs"])
    return {
        "id": analysis_id,
        "created_at": created_at,
        **model_sides(pair, ctx),
        "response_ids": response_ids,
        "response_mask": [int(x) for x in scored],
        "response_text": alignment.text,
        "retokenized": ctx.retokenized,
        "steps": steps,
        "virtual_rollout": {"token_ids": rollout_ids, "text": "".join(t_text[i] for i in rollout_ids)},
        "summary": summary,
        "verdict": verdict(
            answer_text(traj, pair.student.tokenizer, response_ids),
            traj.reference_answer,
            traj.correct,
            verdict_deadline_s,
            question=ctx.student_text,
        ),
        "trajectory": trajectory_record(traj),
        "top_k": top_k,
        "continuation_tokens": 0,
        "generation": generation,
        "backend": "local",
        "notes": [
            *ctx.notes,
            "the teacher has another tokenizer: it read the response text under its own "
            "tokenization; log-probs are exact per span, KL and teacher mass are estimates at span "
            "starts (docs/metrics.md, 'Teachers with another tokenizer')",
        ],
        "alignment": {
            "teacher_response_ids": alignment.teacher_ids,
            "teacher_tokens": [t_text[i] for i in alignment.teacher_ids],
            "spans": spans,
            "student_vocab_size": pair.vocab_size,
            "teacher_vocab_size": pair.teacher_vocab_size,
            "shared_vocabulary": result.shared_vocabulary,
            "attribution": "span_end",
            "estimated": ESTIMATED,
        },
        **(extra or {}),
    }


def check_cross_request(pair: Models, traj: Trajectory, continuation_tokens: int, recovery: bool) -> None:
    """Refuse, before any model work, what a cross-tokenizer pair cannot do: continuations and
    recovery (teacher tokens spliced into the student's sequence), and a prompt of token ids
    without the teacher's own (`teacher_prompt_ids`, in the teacher's vocabulary)."""
    if not pair.cross_tokenizer:
        return
    if continuation_tokens:
        refuse_across(
            pair, "continuation_tokens (the teacher's continuations from each prefix)", "continuation_tokens"
        )
    if recovery:
        refuse_across(pair, "recovery (the teacher taking over from each prefix)", "recovery")
    if traj.prompt_ids is not None and traj.teacher_prompt_ids is None:
        raise BadTrajectory(
            "the teacher has another tokenizer: a prompt given as token ids needs teacher_prompt_ids "
            "too, in the teacher's vocabulary (or give the prompt as text)",
            field="teacher_prompt_ids",
        )


def eos_ids(model: Any) -> set[int]:
    """The ids that end a sequence for `model` (its generation config's and its tokenizer's)."""
    ids: set[int] = set()
    config = getattr(model.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return ids


def cross_analysis(
    pair: Models,
    backend: Any,
    traj: Trajectory,
    ctx: Contexts,
    response: list[int],
    top_k: int,
    generation: dict[str, Any] | None,
    progress: Any,
    extra: dict[str, Any],
    verdict_deadline_s: float = DEADLINE_S,
) -> dict[str, Any]:
    """One analysis with a teacher of another tokenizer: align, replay both sides on `backend`
    (its `cross_replay`), assemble."""
    from vrollout.ids import new_id, now

    alignment = align(pair.student.tokenizer, pair.teacher.tokenizer, response, eos_ids(pair.student))
    result = backend.cross_replay(ctx.student_ids, ctx.teacher_ids, alignment, top_k, progress)
    # How it was computed, as every analysis says (issue #29). The noise object stays off: the
    # cross path's spans carry no `uncertain` flags or KL intervals for it to stand behind.
    described = backend.describe()
    computed_on = {key: described[key] for key in ("device", "dtype") if key in described}
    return build_cross_analysis(
        analysis_id=new_id(),
        created_at=now(),
        pair=pair,
        traj=traj,
        ctx=ctx,
        alignment=alignment,
        result=result,
        top_k=top_k,
        generation=generation,
        extra={**computed_on, **extra},
        verdict_deadline_s=verdict_deadline_s,
    )
