"""Preflight: what to read before an analysis's numbers are trusted (docs/metrics.md, "Preflight").

- `context_diff`: the student's and the teacher's context ids diffed token by token; anything that
  differs outside the privileged block (the privileged text and the teacher template's text on
  its side of the prompt) is flagged by kind: a system prompt, special tokens, whitespace, other.
- `noise_floor`: the teacher scored *without* the privileged info on its own path, against the
  student's scores (the pass itself is the backend's `replay`; this only sums it up).
- `leak_score`: how many word n-grams of the teacher's virtual rollout (and continuations) are
  copied from the privileged text.
- `job_preflight`: a job's aggregate of its lines' preflights.

Pure functions over ids, texts and numbers: no torch, no HTTP, no storage.
"""

from __future__ import annotations

import math
import re
from difflib import SequenceMatcher
from typing import Any

from vrollout.inputs.rendered import PROBE
from vrollout.inputs.trajectories import Trajectory
from vrollout.pipeline.backend import Models
from vrollout.pipeline.contexts import Contexts, TokenLimit, render_role, tokenize_within
from vrollout.pipeline.replay import ReplayResult
from vrollout.rules import fill_teacher_template

LEAK_N = 4  # words per n-gram of the leak score
MAX_FLAGS = 20  # flags kept per analysis (the count of all of them is kept too)
MAX_FLAG_TEXT = 200  # characters of each side's text kept in a flag
WORD = re.compile(r"\w+|[^\w\s]")  # a word: a run of letters/digits, or one punctuation mark


# ----- which tokens hold the privileged block ---------------------------------------------------


def privileged_chars(teacher_text: str, privileged: str | None, template: str) -> tuple[int, int] | None:
    """The character span of the privileged block in the teacher's context text: the privileged
    text and the teacher template's text on its side of `{prompt}` (for the default template,
    everything after the prompt). Falls back to the privileged text alone where the template's
    text is not found as written (a chat template that trims it); None where neither is."""
    if not privileged:
        return None
    candidates = []
    try:
        full = fill_teacher_template(template, PROBE, privileged)
    except (KeyError, IndexError, ValueError):
        full = ""
    if full.count(PROBE) == 1:
        before, after = full.split(PROBE)
        side = after if privileged in after else before if privileged in before else ""
        candidates += [side, side.strip()]
    candidates += [privileged, privileged.strip()]
    for text in candidates:
        at = teacher_text.rfind(text) if text else -1
        if at >= 0:
            return at, at + len(text)
    return None


def token_spans(tokenizer: Any, ids: list[int], text: str) -> list[tuple[int, int]]:
    """The character span of each token of `ids` in `text`: the tokenizer's offsets where `text`
    tokenizes to exactly `ids` (the rendered paths), else each token decoded alone, end to end."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass  # a slow tokenizer has no offsets
    spans, at = [], 0
    for piece in tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False):
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans


def token_range(spans: list[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int] | None:
    """[first, last + 1) of the tokens whose characters overlap `chars`."""
    a, b = chars
    inside = [i for i, (start, end) in enumerate(spans) if start < b and end > a]
    return (inside[0], inside[-1] + 1) if inside else None


# ----- the context diff ----------------------------------------------------------------------


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (named, and added ones marked special)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return ids | {i for i, t in added.items() if getattr(t, "special", False)}


def same_vocabulary(pair: Models) -> bool:
    """Whether ids mean the same tokens for both models (a token diff is meaningful)."""
    s, t = pair.student.tokenizer, pair.teacher.tokenizer
    return s is t or s.get_vocab() == t.get_vocab()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FLAG_TEXT else text[:MAX_FLAG_TEXT] + "…"


def _kind(
    s_ids: list[int], t_ids: list[int], s_text: str, t_text: str, specials: set[int], before_user: bool
) -> str:
    """What a difference outside the privileged block is, first match wins: `system_prompt` (it
    ends before the first user message's turn in both contexts, i.e. strictly before its
    content, and has text other than special tokens and whitespace), `special_tokens`,
    `whitespace` (equal once whitespace is removed), else `other`."""
    has_special = any(i in specials for i in s_ids + t_ids)
    plain = [i for i in s_ids + t_ids if i not in specials]
    if before_user and plain and (s_text + t_text).strip():
        return "system_prompt"
    if has_special:
        return "special_tokens"
    if "".join(s_text.split()) == "".join(t_text.split()):
        return "whitespace"
    return "other"


def _first_user_at(text: str, messages: list[dict[str, str]] | None) -> int:
    """Where the first user message's content starts in a rendered context (-1: not found)."""
    user = next((m["content"] for m in messages or [] if m["role"] == "user" and m["content"].strip()), None)
    if user is None:
        return -1
    head = user.strip()[:40]
    return text.find(head)


def context_diff(traj: Trajectory, ctx: Contexts, pair: Models, template: str) -> dict[str, Any]:
    """The two contexts diffed token by token (difflib over ids), every difference outside the
    privileged block flagged by kind. For token ids given without the privileged text, the
    largest difference is taken as the privileged block (`privileged_source`)."""
    s_ids, t_ids = ctx.student_ids, ctx.teacher_ids
    out: dict[str, Any] = {
        "ok": None,
        "compared": "token_ids",
        "student_tokens": len(s_ids),
        "teacher_tokens": len(t_ids),
        "privileged_range": None,
        "privileged_source": None,
        "flags": [],
        "flags_total": 0,
        "skipped": None,
    }
    if not same_vocabulary(pair):
        out["skipped"] = (
            "the teacher has another tokenizer: its ids are not the student's, so the contexts "
            "are not diffed token by token"
        )
        return out
    tok = pair.teacher.tokenizer
    opcodes = [
        op for op in SequenceMatcher(None, s_ids, t_ids, autojunk=False).get_opcodes() if op[0] != "equal"
    ]
    block = None
    chars = privileged_chars(ctx.teacher_text, ctx.privileged, template)
    if chars is not None:
        block = token_range(token_spans(tok, t_ids, ctx.teacher_text), chars)
        out["privileged_source"] = "privileged_text"
    elif ctx.privileged is None and traj.teacher_prompt_ids and opcodes:
        largest = max(opcodes, key=lambda op: op[4] - op[3])
        block = (largest[3], largest[4])
        out["privileged_source"] = "largest_difference"
    out["privileged_range"] = list(block) if block else None
    specials = special_ids(tok)
    s_spans = token_spans(pair.student.tokenizer, s_ids, ctx.student_text)
    t_spans = token_spans(tok, t_ids, ctx.teacher_text)
    s_user = _first_user_at(ctx.student_text, traj.messages)
    t_user = _first_user_at(ctx.teacher_text, traj.messages)
    flags = []
    for _, i1, i2, j1, j2 in opcodes:
        if block is not None and block[0] <= j1 and j2 <= block[1] and (j2 > j1 or block[0] < j1 < block[1]):
            continue  # the privileged block itself (a deletion inside it: tokens merged at its edge)
        s_part, t_part = s_ids[i1:i2], t_ids[j1:j2]
        s_text = tok.decode(s_part, skip_special_tokens=False)
        t_text = tok.decode(t_part, skip_special_tokens=False)
        s_end = s_spans[i2 - 1][1] if i2 > i1 else (s_spans[i1][0] if i1 < len(s_spans) else 0)
        t_end = t_spans[j2 - 1][1] if j2 > j1 else (t_spans[j1][0] if j1 < len(t_spans) else 0)
        # strictly before: text placed right at the user content's start is in the user turn
        before_user = s_user >= 0 and t_user >= 0 and s_end < s_user and t_end < t_user
        flags.append(
            {
                "kind": _kind(s_part, t_part, s_text, t_text, specials, before_user),
                "student_text": _clip(s_text),
                "teacher_text": _clip(t_text),
                "student_range": [i1, i2],
                "teacher_range": [j1, j2],
            }
        )
    out.update(ok=not flags, flags=flags[:MAX_FLAGS], flags_total=len(flags))
    return out


# ----- the noise floor -----------------------------------------------------------------------


def bare_teacher_ids(traj: Trajectory, ctx: Contexts, pair: Models, limit: TokenLimit) -> list[int]:
    """The teacher's context without the privileged info, on the teacher's own path: the prompt's
    messages through the teacher's chat template and its arguments (`contexts.render_role`), a
    rendered prompt tokenized by the teacher's tokenizer, token ids as the student's. Without
    privileged info it is the teacher's context itself."""
    if not ctx.privileged:
        return ctx.teacher_ids
    if traj.format == "token_ids":
        return list(traj.prompt_ids or ctx.student_ids)
    if traj.rendered or traj.messages is None:
        return tokenize_within(pair.teacher.tokenizer, ctx.student_text, limit)
    return render_role(pair, "teacher", traj.messages, limit)[0]


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def noise_floor(
    main: ReplayResult,
    bare: ReplayResult,
    same_context: bool,
    estimated: bool,
    reused: bool = False,
    reused_student: bool = False,
) -> dict[str, Any]:
    """The noise floor from `bare` (the replay of the same response, student context vs the
    teacher's context without the privileged info) against `main` (the analysis's replay):
    reverse KL per token (mean, max, total) of the bare replay; the largest |bare teacher log-prob
    − the analysis's student log-prob| of the actual token; and the spread of the student's
    log-probs between the two replays (the same request made twice). `reused`: no second replay was
    run (the analysis had no privileged info, or a shared-weights local teacher got the student's
    ids), so its own replay is the bare one and no spread is measured. `reused_student`: only the
    teacher ran again, against the student's pass kept from the analysis's replay (the local
    engine), so the spread is 0 by construction, not a measurement."""
    kl = bare.reverse_kl
    delta = [abs(t - s) for t, s in zip(bare.teacher_logprob, main.student_logprob, strict=True)]
    spread = [abs(a - b) for a, b in zip(bare.student_logprob, main.student_logprob, strict=True)]
    return {
        "computed": True,
        "skipped": None,
        "same_context": same_context,
        "reused_replay": reused,
        "reused_student_pass": reused or reused_student,
        "estimated": estimated,
        "tokens": len(kl),
        "reverse_kl_mean": _mean(kl),
        "reverse_kl_max": max(kl) if kl else None,
        "reverse_kl_total": math.fsum(kl),
        "max_abs_logprob_delta": max(delta) if delta else None,
        "repeat_spread_max": max(spread) if spread else None,
        "repeat_spread_mean": _mean(spread),
        "signal_reverse_kl_mean": _mean(main.reverse_kl),
    }


def student_as_teacher(main: ReplayResult) -> ReplayResult:
    """The bare replay of a shared-weights teacher given the student's own ids: the student's
    pass of `main` on both sides (zero KL by construction, no second pass)."""
    zeros = [0.0] * len(main.student_logprob)
    return ReplayResult(
        student_logprob=main.student_logprob,
        teacher_logprob=main.student_logprob,
        reverse_kl=zeros,
        forward_kl=zeros,
    )


def noise_floor_skipped(reason: str) -> dict[str, Any]:
    """The noise floor's place when it was not computed, with the reason."""
    return {"computed": False, "skipped": reason}


# ----- the leak score ------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """The leak score's words: lowercased runs of letters and digits, and punctuation marks."""
    return WORD.findall(text.lower())


def _copied(texts: list[str], source: list[str], n: int) -> dict[str, Any]:
    grams = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    total = copied = longest = 0
    for text in texts:
        w = words(text)
        seq = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(seq)
        copied += sum(g in grams for g in seq)
        if w and source:
            match = SequenceMatcher(None, w, source, autojunk=False).find_longest_match(
                0, len(w), 0, len(source)
            )
            longest = max(longest, match.size)
    return {
        "ngrams": total,
        "copied": copied,
        "share": copied / total if total else None,
        "longest_copied_run": longest,
    }


def leak_score(
    privileged: str | None,
    virtual_rollout: str,
    response: str,
    continuations: list[str] | None,
    n: int = LEAK_N,
) -> dict[str, Any] | None:
    """How much of the teacher's output copies the privileged text (None without one): for the
    virtual rollout, the student's response (the baseline: what the student wrote anyway) and
    the continuations (pooled), the share of their word n-grams found in the privileged text and
    the longest run of words copied from it; `excess` = the virtual rollout's share − the
    response's (copying beyond what the student already wrote)."""
    if not privileged:
        return None
    source = words(privileged)
    rollout = _copied([virtual_rollout], source, n)
    student = _copied([response], source, n)
    excess = None
    if rollout["share"] is not None and student["share"] is not None:
        excess = rollout["share"] - student["share"]
    return {
        "n": n,
        "unit": "words",
        "privileged_words": len(source),
        "virtual_rollout": rollout,
        "student_response": student,
        "continuations": _copied(continuations, source, n) if continuations else None,
        "excess": excess,
    }


# ----- an analysis's preflight, and a job's --------------------------------------------------


def compact(preflight: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few numbers of a preflight that a job's aggregate reads (kept in each line's digest)."""
    if not preflight:
        return None
    diff, floor, leak = preflight["context_diff"], preflight["noise_floor"], preflight["leak"]
    return {
        "context_ok": diff.get("ok"),
        "flag_kinds": sorted({f["kind"] for f in diff.get("flags", [])}),
        "noise_floor_kl_mean": floor.get("reverse_kl_mean") if floor.get("computed") else None,
        "signal_kl_mean": floor.get("signal_reverse_kl_mean") if floor.get("computed") else None,
        "leak_share": leak["virtual_rollout"]["share"] if leak else None,
        "leak_excess": leak["excess"] if leak else None,
    }


def job_preflight(compacts: list[dict[str, Any] | None]) -> dict[str, Any]:
    """A job's preflight from its lines' `compact` preflights: how many lines were checked, how
    many have context differences outside the privileged block (and of which kinds), the noise
    floor and the signal (mean and max over lines), and the leak share (mean and max)."""
    found = [c for c in compacts if c]
    kinds: dict[str, int] = {}
    for c in found:
        for kind in c["flag_kinds"]:
            kinds[kind] = kinds.get(kind, 0) + 1

    def stats(key: str) -> dict[str, float | None]:
        values = [c[key] for c in found if c.get(key) is not None]
        return {"mean": _mean(values), "max": max(values) if values else None, "lines": len(values)}

    return {
        "lines": len(compacts),
        "lines_checked": len(found),
        "lines_flagged": sum(1 for c in found if c["context_ok"] is False),
        "flag_kinds": kinds,
        "noise_floor_kl_mean": stats("noise_floor_kl_mean"),
        "signal_kl_mean": stats("signal_kl_mean"),
        "leak_share": stats("leak_share"),
    }


def build_preflight(
    traj: Trajectory, ctx: Contexts, pair: Models, analysis: dict[str, Any], floor: dict[str, Any]
) -> dict[str, Any]:
    """An analysis's `preflight`: its context diff, its noise floor (`floor`, computed by the
    caller's backend) and the leak score of its virtual rollout and continuations."""
    template = getattr(traj, "teacher_template", None) or pair.teacher_template
    continuations = [
        s["teacher_continuation"]["text"] for s in analysis["steps"] if s.get("teacher_continuation")
    ]
    return {
        "context_diff": context_diff(traj, ctx, pair, template),
        "noise_floor": floor,
        "leak": leak_score(
            ctx.privileged,
            analysis["virtual_rollout"]["text"],
            analysis["response_text"],
            continuations or None,
        ),
    }


def add_preflight(analysis: dict[str, Any], preflight: dict[str, Any]) -> None:
    """Put `preflight` in the analysis, and its three headline numbers in the summary."""
    analysis["preflight"] = preflight
    floor, leak = preflight["noise_floor"], preflight["leak"]
    analysis["summary"].update(
        preflight_ok=preflight["context_diff"]["ok"],
        noise_floor_reverse_kl_mean=floor.get("reverse_kl_mean") if floor.get("computed") else None,
        leak_share=leak["virtual_rollout"]["share"] if leak else None,
    )
