"""The digest of an analysis: its summary row (the summaries export's columns), the counts of its
per-step reverse KL in the signal figure's bins, and the share of its KL in each tenth of the
response. A few hundred bytes, made when an analysis is stored and kept beside it
(`storage.store`), so that dataset views over a large job (`report/`) never hold every analysis
in memory. Pure functions: no database, no HTTP.
"""

from __future__ import annotations

import math
from typing import Any

from vrollout.metrics.objectives import QUADRANTS
from vrollout.metrics.signal import concentration
from vrollout.pipeline.preflight import compact
from vrollout.verdicts.answers import verdict

# How the signal is spread over a trajectory's tokens (summary.concentration, metrics/signal.py):
# flattened into the row as kl_<field> (reverse KL) and abs_advantage_<field> (|advantage|).
CONCENTRATION_FIELDS = ("top_1pct", "top_5pct", "top_10pct", "top_20pct", "tokens_for_80pct", "gini")
SIGNAL_COLUMNS = tuple(
    f"{prefix}_{field}" for prefix in ("kl", "abs_advantage") for field in CONCENTRATION_FIELDS
)
# Teachability and surface/fork counts, copied from the summary (null in analyses made before
# them, or where they were not computed: no continuations, no recovery).
TEACHING_COLUMNS = (
    "teacher_mass_on_student_topk_mean", "divergences_in_student_topk", "divergences_classified",
    "divergences_surface", "divergences_fork", "forks_that_matter",
)  # fmt: skip
# The preflight's headline numbers (pipeline/preflight.py `add_preflight`; null before it existed).
PREFLIGHT_COLUMNS = ("preflight_ok", "noise_floor_reverse_kl_mean", "leak_share")
# TIP's quadrant shares (summary.quadrants, docs/objectives.md): QUADRANT_tokens, QUADRANT_signal,
# read from the digest's `quadrants` (null for an analysis without them).
QUADRANT_COLUMNS = tuple(f"{q}_{f}" for q in QUADRANTS for f in ("tokens", "signal"))
SUMMARY_COLUMNS = (
    "analysis_id", "line", "trajectory_id", "tokens", "agreement_rate", "divergences",
    "first_divergence", "reverse_kl_total", "reverse_kl_mean", "forward_kl_total",
    "advantage_total", *SIGNAL_COLUMNS, *TEACHING_COLUMNS, "correct", "verdict_method", "score",
    "step", "teacher_context", *PREFLIGHT_COLUMNS, *QUADRANT_COLUMNS, "preview",
)  # fmt: skip

# Digests stored with an older version (or none) are made again from the stored analysis when a
# dataset view reads them (`Store.digest_of`): bump it when a digest gains a key.
# 9: decile_tokens (a conversation's tenths hold context steps: the mini strips' means);
# 8: segments (thinking/answer), and only the student's steps (#25: a conversation's context
# steps have null figures); 7: objectives and quadrants (docs/objectives.md); 6: preflight
# columns in the summary row;
# 5: preflight; 4: teacher_context; 3: step, score, verdict_method, reverse_kl_at_divergences
DIGEST_VERSION = 9


def verdict_of(analysis: dict[str, Any]) -> dict[str, Any] | None:
    """The analysis's verdict (docs/metrics.md, "Verdicts"); one stored before verdicts existed
    gets it now, from its line's `correct` or its reference answer (None: neither)."""
    if "verdict" in analysis:
        return analysis["verdict"]
    traj = analysis.get("trajectory", {})
    # on a request's thread (a dataset view): the requests' math-verify helpers, not the model's
    return verdict(
        analysis["response_text"], traj.get("reference_answer"), traj.get("correct"), lane="requests",
        question=analysis["student"].get("context_text"),
    )  # fmt: skip


def correct(analysis: dict[str, Any]) -> bool | None:
    """Whether the student's response is right (None: no verdict, as without a reference)."""
    found = verdict_of(analysis)
    return None if found is None else found["correct"]


def signal_columns(analysis: dict[str, Any]) -> dict[str, Any]:
    """The concentration of reverse KL and of |advantage|, flattened (`kl_top_5pct`, ...). An
    analysis stored before its summary carried them gets them from its steps."""
    s, out = analysis["summary"], {}
    for prefix, key, value in (
        ("kl", "concentration", lambda step: step["reverse_kl"]),
        ("abs_advantage", "concentration_abs_advantage", lambda step: abs(step["advantage"])),
    ):
        spread = s.get(key) or concentration([value(step) for step in student_steps(analysis)])
        out.update({f"{prefix}_{field}": spread.get(field) for field in CONCENTRATION_FIELDS})
    return out


def student_steps(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps of the tokens the student wrote: a conversation's context steps (`scored`
    false: tool and user turns) have no figures (steps stored before `scored` all count)."""
    return [s for s in analysis["steps"] if s.get("scored", True)]


SEGMENT_FIELDS = ("tokens", "reverse_kl_mean", "divergences", "divergences_surface", "divergences_fork")


def segment_figures(summary: dict[str, Any]) -> dict[str, Any] | None:
    """A few figures of summary.segments (thinking, answer) for the headline; None without it."""
    parts = summary.get("segments")
    if not parts:
        return None
    return {
        name: None
        if part is None
        else {
            **{f: part.get(f) for f in SEGMENT_FIELDS},
            "kl_top_5pct": (part.get("concentration") or {}).get("top_5pct"),
        }
        for name, part in parts.items()
    }


def summary_row(analysis: dict[str, Any]) -> dict[str, Any]:
    s, traj, found = analysis["summary"], analysis.get("trajectory", {}), verdict_of(analysis)
    text = " ".join(analysis["response_text"].split())
    return {
        "analysis_id": analysis["id"],
        "line": analysis.get("job", {}).get("line"),
        "trajectory_id": analysis.get("trajectory", {}).get("id"),
        "tokens": s["tokens"],
        "agreement_rate": s["agreement_rate"],
        "divergences": s["divergences"],
        "first_divergence": s["first_divergence"],
        "reverse_kl_total": s["reverse_kl_total"],
        "reverse_kl_mean": s["reverse_kl_mean"],
        "forward_kl_total": s["forward_kl_total"],
        "advantage_total": s["advantage_total"],
        **signal_columns(analysis),
        **{name: s.get(name) for name in TEACHING_COLUMNS},
        "correct": None if found is None else found["correct"],
        "verdict_method": None if found is None else found["method"],
        "score": traj.get("score"),
        "step": traj.get("step"),
        # which text the teacher was given (inputs.teacher_context); older analyses: privileged
        "teacher_context": analysis["teacher"].get("context_kind") or "privileged",
        **{name: s.get(name) for name in PREFLIGHT_COLUMNS},
        **quadrant_shares(s.get("quadrants")),
        "preview": text[:120],
    }


def digest(analysis: dict[str, Any]) -> dict[str, Any]:
    """All that the summaries and the figures need of one analysis (a few hundred bytes, stored
    beside it): its summary row, the counts of its per-step reverse KL in the figure's bins, and
    the share of its KL in each tenth of the response."""
    steps = student_steps(analysis)
    kl = [s["reverse_kl"] for s in steps]
    return {
        **summary_row(analysis),
        "kl_bins": kl_bin_counts(kl),
        "deciles": decile_shares(analysis),
        "decile_tokens": decile_tokens(analysis),  # the student's tokens in each of those tenths
        # the drift views' "share of reverse KL at divergences" (report/drift.py)
        "reverse_kl_at_divergences": sum(s["reverse_kl"] for s in steps if not s["agree"]),
        "preflight": compact(analysis.get("preflight")),  # the job's preflight (pipeline/preflight.py)
        # each distillation objective's summary and TIP's quadrants (report/headline.py rows)
        "objectives": analysis["summary"].get("objectives"),
        "quadrants": analysis["summary"].get("quadrants"),
        "segments": segment_figures(analysis["summary"]),  # thinking and answer (report/headline.py)
        "version": DIGEST_VERSION,
    }


def is_current(digest: dict[str, Any] | None) -> bool:
    """Whether a stored digest has every key this version's views read."""
    return digest is not None and digest.get("version") == DIGEST_VERSION


def summary_of(digest: dict[str, Any]) -> dict[str, Any]:
    """The summary row held in a digest, in the export's columns (null for a column that a
    digest made by an older version lacks)."""
    shares = quadrant_shares(digest.get("quadrants"))  # kept nested in digests of version 7
    return {k: shares[k] if k in shares else digest.get(k) for k in SUMMARY_COLUMNS}


def quadrant_shares(quadrants: dict[str, Any] | None) -> dict[str, Any]:
    """summary.quadrants as the summary row's QUADRANT_COLUMNS (nulls without it)."""
    found = quadrants or {}
    return {f"{q}_{f}": (found.get(q) or {}).get(f) for q in QUADRANTS for f in ("tokens", "signal")}


def decile_shares(analysis: dict[str, Any]) -> list[float] | None:
    """Share of the trajectory's total reverse KL in each tenth of the response (context steps
    count as 0: the tenths are of the whole response)."""
    kl = [s["reverse_kl"] if s.get("scored", True) else 0.0 for s in analysis["steps"]]
    total = sum(kl)
    if total <= 0:
        return None
    shares = [0.0] * 10
    for t, value in enumerate(kl):
        shares[min(9, t * 10 // len(kl))] += value / total
    return shares


def decile_tokens(analysis: dict[str, Any]) -> list[int]:
    """How many of the student's (scored) tokens fall in each tenth of the whole response, cut as
    `decile_shares` cuts it: a tenth's mean reverse KL per token is its share of the total over
    this count (a conversation's context steps are in the tenths, not in the count)."""
    steps = analysis["steps"]
    counts = [0] * 10
    for t, s in enumerate(steps):
        if s.get("scored", True):
            counts[min(9, t * 10 // len(steps))] += 1
    return counts


KL_BINS = (-6.0, 2.0, 4)  # log10 of the lowest and highest edges, bins per decade


def kl_bin_counts(values: list[float]) -> list[int]:
    """How many of `values` fall in each bin of the signal figure (log-spaced)."""
    lo, hi, per_decade = KL_BINS
    counts = [0] * int((hi - lo) * per_decade)
    for v in values:
        x = math.log10(max(v, 10**lo))
        counts[min(len(counts) - 1, max(0, int((x - lo) * per_decade)))] += 1
    return counts
