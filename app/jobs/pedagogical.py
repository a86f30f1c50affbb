"""Pedagogical rollouts as a job's lines: per prompt, the student's own rollout with OPD's view of
it (an analysis, as any job stores) and the pedagogical rollout on the same contexts, kept as one
ROLLOUT RECORD (docs/formats.md, "Rollout records").

The job runner (jobs/runner.py) and `vrollout pedagogical` both call `prepare_line` and
`run_line`; what to store or write is theirs. No HTTP, no storage here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vrollout.errors import BadTrajectory, VRError
from vrollout.inputs.rendered import as_messages, ids_as_messages
from vrollout.inputs.validation import validate
from vrollout.pipeline.analyzer import Analyzer, Prepared, PreparedRollout
from vrollout.pipeline.replay import Progress, _no_progress
from vrollout.rules import eos_set
from vrollout.verdicts.answers import verdict
from vrollout.verdicts.math_check import DEADLINE_S

MODES = ("analysis", "pedagogical")
# The fields of a pedagogical request that a job's options may hold (the rest comes from each line).
OPTION_FIELDS = ("threshold", "max_rank", "sweep", "generation")
# Keys of `Analyzer.pedagogical`'s result that are about the request, not the rollout.
NOT_ROLLOUT = ("id", "created_at", "analysis_id", "student", "teacher", "sweep")


def parse_sweep(text: str | None) -> list[float] | None:
    """A sweep given as a comma list (a form field, a flag): `"0.01, 0.05,0.2"`."""
    if text is None or not text.strip():
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadTrajectory(
            f"sweep must be a comma-separated list of thresholds, e.g. 0.01,0.05,0.2; got {text!r}",
            field="sweep",
        ) from None


def pedagogical_options(
    analyzer: Analyzer,
    *,
    threshold: float | None = None,
    max_rank: int | None = None,
    sweep: list[float] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """A pedagogical job's options, checked as `POST /api/pedagogical` checks its own (the same
    request model, the vocabulary, VROLLOUT_MAX_PEDAGOGICAL_COST per line): the 4xx names the
    field. `generation` comes back complete (the defaults filled in), so the student's own
    rollout of a line without a response is generated with exactly the rollout's settings."""
    given = {"threshold": threshold, "max_rank": max_rank, "sweep": sweep}
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    sampling = {"temperature": temperature, "top_p": top_p, "seed": seed, "max_new_tokens": max_new_tokens}
    if any(v is not None for v in sampling.values()):
        options["generation"] = {k: v for k, v in sampling.items() if v is not None}
    request = validate(analyzer.models.pedagogical, options)
    policy, sweep = analyzer.pedagogical_policy(request)
    keys = ("max_new_tokens", "temperature", "top_p", "seed")
    generation = {k: getattr(policy, k) for k in keys}
    return {
        "threshold": policy.threshold,
        "max_rank": policy.max_rank,
        "sweep": sweep,
        "generation": generation,
    }


def line_options(options: dict[str, Any]) -> dict[str, Any]:
    """The analysis options a pedagogical job's lines are prepared with (`Analyzer.prepare_line`):
    the student generates a missing response with the rollout's sampling settings and seed."""
    return {"generation": options["generation"]}


@dataclass
class PreparedLine:
    """A line of a pedagogical job, checked: its analysis and its rollout, on the same contexts."""

    prep: Prepared
    rollout: PreparedRollout


def prepare_line(analyzer: Analyzer, payload: Any, options: dict[str, Any]) -> PreparedLine:
    """A stored line of a pedagogical job (`payload`, as `Analyzer.prepare_line` left it) with the
    job's options (`pedagogical_options`)."""
    return with_rollout(analyzer, analyzer.prepare(payload), options)


def with_rollout(analyzer: Analyzer, prep: Prepared, options: dict[str, Any]) -> PreparedLine:
    """The analysis of the student's own rollout (`prep`) and the pedagogical rollout from the
    same contexts, with the sampling settings the analysis uses (the line's own `generation`, if
    it has one, else the job's)."""
    sampling = asdict(prep.options)
    generation = {k: sampling[k] for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    fields = {k: options[k] for k in OPTION_FIELDS if options.get(k) is not None}
    request = validate(analyzer.models.pedagogical, {**fields, "generation": generation})
    policy, sweep = analyzer.pedagogical_policy(request)
    reference = prep.traj.reference_answer
    rollout = PreparedRollout(
        prep.ctx.student_ids,
        prep.ctx.teacher_ids,
        policy,
        None if reference is None else str(reference),
        sweep,
        None,
    )
    return PreparedLine(prep, rollout)


def end_ids(analyzer: Analyzer) -> set[int]:
    """The student's end-of-sequence ids (what a completion's text leaves out)."""
    student = analyzer.pair.student
    config = getattr(getattr(student, "model", None), "generation_config", None)
    return eos_set(getattr(config, "eos_token_id", None), student.tokenizer.eos_token_id)


def run_line(
    analyzer: Analyzer,
    line: int,
    item: PreparedLine,
    extra: dict[str, Any] | None = None,
    progress: Progress = _no_progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The line's analysis (not stored: the caller stores it) and its rollout record. `progress`
    is called at every step boundary of both (a job's cancel raises there)."""
    analysis = analyzer.run(item.prep, progress, store=False, extra=extra)
    rollout = analyzer.pedagogical(item.rollout, progress)
    tok = analyzer.pair.student.tokenizer
    words = [
        tok.decode(ids, skip_special_tokens=True)
        for ids in (analysis["response_ids"], rollout["response_ids"])
    ]
    deadline_s = analyzer.settings.math_verify_timeout_s
    return analysis, rollout_record(line, item, analysis, rollout, *words, tok, deadline_s)


def run_lines(
    analyzer: Analyzer,
    group: list[tuple[int, PreparedLine]],
    extras: list[dict[str, Any]],
    progress: Progress = _no_progress,
) -> list[tuple[dict[str, Any], dict[str, Any]] | VRError]:
    """`run_line` for each, a line's error in its place (one line's problem never costs another).
    The analyses run one by one; the pedagogical rollouts (and sweep points) of the lines whose
    analysis succeeded decode together (`Analyzer.pedagogical_batch`: VROLLOUT_PEDAGOGICAL_BATCH
    at a time on local models, each equal to its own rollout)."""
    results: list[tuple[dict[str, Any], dict[str, Any]] | VRError | dict[str, Any]] = []
    for (_, item), extra in zip(group, extras, strict=True):
        try:
            results.append(analyzer.run(item.prep, progress, store=False, extra=extra))
        except VRError as exc:
            results.append(exc)
    ok = [i for i, r in enumerate(results) if not isinstance(r, VRError)]
    rollouts = analyzer.pedagogical_batch([group[i][1].rollout for i in ok], progress)
    tok = analyzer.pair.student.tokenizer
    for i, rollout in zip(ok, rollouts, strict=True):
        if isinstance(rollout, VRError):
            results[i] = rollout
            continue
        analysis = results[i]
        assert isinstance(analysis, dict)
        words = [
            tok.decode(ids, skip_special_tokens=True)
            for ids in (analysis["response_ids"], rollout["response_ids"])
        ]
        deadline_s = analyzer.settings.math_verify_timeout_s
        record = rollout_record(*group[i], analysis, rollout, *words, tok, deadline_s)
        results[i] = (analysis, record)
    return results  # type: ignore[return-value]


def rollout_record(
    line: int, item: PreparedLine, analysis: dict[str, Any], rollout: dict[str, Any],
    student_words: str, rollout_words: str, tokenizer: Any, deadline_s: float = DEADLINE_S,
) -> dict[str, Any]:  # fmt: skip
    """The ROLLOUT RECORD of a line (docs/formats.md): the student alone, OPD's view of its
    rollout, and the pedagogical rollout (+ sweep). `correct` is one reference check for both
    (`answers.verdict` of each response's words, without special tokens, as an analysis reads
    its response, the prompt as its question; a log's own `correct` is not used), null without a
    reference; `verdict` beside it says what was parsed and how. `tokenizer`: the
    student's (`record_prompt`); `deadline_s`: math-verify's (Settings.math_verify_timeout_s)."""
    traj, summary = item.prep.traj, analysis["summary"]
    reference = item.rollout.reference
    pedagogical = {k: v for k, v in rollout.items() if k not in NOT_ROLLOUT}
    question = item.prep.ctx.student_text  # an answer copied from it is no answer (answers.restates)
    pedagogical["verdict"] = verdict(rollout_words, reference, deadline_s=deadline_s, question=question)
    pedagogical["correct"] = _correct(pedagogical["verdict"])
    student_verdict = verdict(student_words, reference, deadline_s=deadline_s, question=question)
    prompt, prompt_text = record_prompt(tokenizer, item)
    return {
        "id": traj.id if traj.id is not None else str(line),
        "line": line,
        "prompt": prompt,
        "prompt_text": prompt_text,
        "reference_answer": reference,
        "student": {
            "analysis_id": analysis["id"],
            "response_ids": analysis["response_ids"],
            "response_text": analysis["response_text"],
            "correct": _correct(student_verdict),
            "verdict": student_verdict,
            "generated": analysis.get("generation") is not None,
        },
        "opd": {
            "divergences": summary["divergences"],
            "reverse_kl_total": summary["reverse_kl_total"],
            "forks_that_matter": summary.get("forks_that_matter"),
        },
        "pedagogical": pedagogical,
        "sweep": rollout["sweep"],
    }


def record_prompt(tokenizer: Any, item: PreparedLine) -> tuple[list[dict[str, str]] | None, str | None]:
    """The record's `prompt` (chat messages, TRL's `prompt`) and `prompt_text` (docs/formats.md,
    "Rollout records"): a line given as messages keeps them; one given rendered (`rendered: true`)
    or as token ids gives the messages its rendering comes from (`inputs.rendered.as_messages`: the
    student's template renders them back to exactly the student's context, so a trainer applying
    it does not template the prompt twice). Where none do, `prompt` is null and `prompt_text` the
    exact text the student saw; otherwise `prompt_text` is null."""
    traj, ctx = item.prep.traj, item.prep.ctx
    if traj.format == "token_ids":
        messages = ids_as_messages(tokenizer, ctx.student_ids)
    elif traj.rendered:
        messages = as_messages(tokenizer, ctx.student_text)
    else:
        return traj.messages, None
    return (messages, None) if messages is not None else (None, ctx.student_text)


def _correct(found: dict[str, Any] | None) -> bool | None:
    return None if found is None else found["correct"]
