"""What the analysis page needs beyond the analysis itself, built once on the server (pure data,
no I/O): the steps by range, the positions its jump controls go to, the headline's chips, the
colour scales, the turns and segments, and the aligned diff of the response and the virtual
rollout. The page embeds this and the analysis without its steps; it fetches the steps it shows
from `GET /api/analyses/{id}/steps` as the reader scrolls (a one-file download embeds them all).
"""

from __future__ import annotations

import math
from typing import Any

from vrollout.errors import VRError
from vrollout.report.figures import roles_of, scored

BLOCK = 200  # steps per block of the strip: the unit the page renders, fetches and drops
LONG = 3 * BLOCK  # steps beyond which a page is long (see page_view)
MAX_RANGE = 2000  # steps one request may ask for (about 2 MB of JSON with top-k 20)
# nats: the fixed colour scale every page shares (the "absolute" option), the same top as the job
# page's and /analyses' mini strips (report/tables.py, KL_STRIP_MAX_NATS)
ABSOLUTE_KL_SCALE = 2.0


class BadRange(VRError):
    """A range of steps that cannot be served: named with the numbers that make it wrong."""

    status = 422


def steps_range(analysis: dict[str, Any], start: int, stop: int | None) -> dict[str, Any]:
    """Steps [start, stop) of an analysis (stop defaults to start + BLOCK, and is cut at the
    total). A range backwards, past the end or longer than MAX_RANGE is refused, naming why."""
    steps = analysis["steps"]
    total = len(steps)
    if start > total:
        raise BadRange(
            f"start ({start}) is past the last step: the analysis has {total} steps", field="start"
        )
    if stop is None:
        stop = min(total, start + BLOCK)
    if stop < start:
        raise BadRange(f"stop ({stop}) is before start ({start})", field="stop")
    if stop - start > MAX_RANGE:
        raise BadRange(f"at most {MAX_RANGE} steps per request (asked for {stop - start})", field="stop")
    stop = min(stop, total)
    return {"start": start, "stop": stop, "total": total, "steps": steps[start:stop]}


def _visible(token: str) -> str:
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def _runs(flags: list[Any]) -> list[dict[str, Any]]:
    """Consecutive equal values as [{"value", "start", "stop"}] (stop exclusive)."""
    runs: list[dict[str, Any]] = []
    for i, value in enumerate(flags):
        if runs and runs[-1]["value"] == value:
            runs[-1]["stop"] = i + 1
        else:
            runs.append({"value": value, "start": i, "stop": i + 1})
    return runs


def marks(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the jump controls go: divergences, forks, forks that matter, uncertain steps (all
    as step indices, in order), and the largest reverse KL."""
    divergences = [i for i, s in enumerate(steps) if scored(s) and not s["agree"]]
    kls = [(s["reverse_kl"], i) for i, s in enumerate(steps) if scored(s) and s["reverse_kl"] is not None]
    return {
        "divergences": divergences,
        "forks": [i for i in divergences if steps[i].get("divergence_kind") == "fork"],
        "matters": [i for i in divergences if steps[i].get("fork_matters")],
        "uncertain": [i for i, s in enumerate(steps) if s.get("uncertain")],
        "top_kl": max(kls)[1] if kls else None,
    }


def turns(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """The response's turns, in order: message index, role, scored or context, first and last
    step. One turn (index null) for a line without them."""
    steps = analysis["steps"]
    roles = roles_of(analysis)
    out = []
    for run in _runs([(s.get("turn"), scored(s)) for s in steps]):
        turn, is_scored = run["value"]
        role = roles[turn] if isinstance(turn, int) and 0 <= turn < len(roles) else None
        out.append(
            {"turn": turn, "role": role or ("assistant" if is_scored else "context"), "scored": is_scored,
             "start": run["start"], "stop": run["stop"]}
        )  # fmt: skip
    return out


def segments(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of thinking and answer (empty where nothing marks them)."""
    if not any(s.get("segment") for s in steps):
        return []
    return [
        {"segment": r["value"], "start": r["start"], "stop": r["stop"]}
        for r in _runs([s.get("segment") for s in steps])
        if r["value"]
    ]


def scales(analysis: dict[str, Any]) -> dict[str, Any]:
    """The colour scales' tops: this page's largest reverse KL and |objective|, and the
    absolute scale shared by every page."""
    steps = [s for s in analysis["steps"] if scored(s)]
    per_objective: dict[str, float] = {}
    for name in (analysis.get("objective_options") or {}).get("objectives", []):
        values = [abs(v) for s in steps if (v := (s.get("objectives") or {}).get(name)) is not None]
        per_objective[name] = max([1e-9, *values])
    kls = [s["reverse_kl"] for s in steps if s["reverse_kl"] is not None and math.isfinite(s["reverse_kl"])]
    return {"reverse_kl": max([1e-9, *kls]), "absolute_kl": ABSOLUTE_KL_SCALE, "objectives": per_objective}


def chips(analysis: dict[str, Any], found: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline as chips, each jumping to its token: the first divergence, the first fork
    that matters, the largest reverse KL; and the concentration (no token: it jumps to the chart).
    Text only: the template escapes it."""
    steps, summary = analysis["steps"], analysis["summary"]

    def at(i: int) -> str:
        s = steps[i]
        return f"#{s['position']} {_visible(s['token'])}→{_visible(s['teacher_top1'])}"

    out = []
    n = summary.get("divergences") or 0
    if found["divergences"]:
        first = found["divergences"][0]
        out.append({"id": "chip-first", "jump": first, "text": f"{at(first)} first of {n} divergences"})
    else:
        out.append({"id": "chip-first", "jump": None, "text": "no divergence"})
    if found["matters"]:
        out.append(
            {
                "id": "chip-matters",
                "jump": found["matters"][0],
                "text": f"{at(found['matters'][0])} fork that matters",
            }
        )
    elif found["forks"]:
        out.append(
            {"id": "chip-fork", "jump": found["forks"][0], "text": f"{at(found['forks'][0])} first fork"}
        )
    top = found["top_kl"]
    if top is not None:
        s = steps[top]
        kl = s["reverse_kl"]
        out.append(
            {
                "id": "chip-top-kl",
                "jump": top,
                "text": f"#{s['position']} {_visible(s['token'])} largest KL {kl:.3g} nats",
            }
        )
    top5 = (summary.get("concentration") or {}).get("top_5pct")
    if top5 is not None:
        out.append({"id": "chip-top5", "jump": None, "text": f"top 5% carry {100 * top5:.0f}%"})
    return out


def diff(steps: list[dict[str, Any]]) -> list[tuple[str, str, int | None]]:
    """The response and the virtual rollout aligned token by token: runs of agreeing tokens as
    one piece of text, each divergence on its own, as (student text, teacher text, step index or
    None for a run). Context tokens (not the student's) are left out."""
    pieces: list[tuple[str, str, int | None]] = []
    run: list[str] = []
    for i, s in enumerate(steps):
        if not scored(s):
            continue
        if s["agree"] or s.get("teacher_rank") is None:
            run.append(s["token"])
            continue
        if run:
            text = "".join(run)
            pieces.append((text, text, None))
            run = []
        pieces.append((s["token"], s["teacher_top1"], i))
    if run:
        text = "".join(run)
        pieces.append((text, text, None))
    return pieces


def page_view(analysis: dict[str, Any], all_steps: bool) -> dict[str, Any]:
    """What the page's script reads besides the analysis: the first block of steps (all of them
    for a one-file download, which has no server to ask), each token's text (the chart's axis and
    the search read them), the jump marks, turns, segments and scales."""
    steps = analysis["steps"]
    found = marks(steps)
    long = len(steps) > LONG
    return {
        "total": len(steps),
        "block": BLOCK,
        # a long page: the strip scrolls in its own box, the diff is built by the script from the
        # tokens and the teacher's token at each divergence
        "long": long,
        "diff_teacher": [steps[i]["teacher_top1"] for i in found["divergences"]] if long else None,
        "first": steps if all_steps else steps[:BLOCK],
        "tokens": [s["token"] for s in steps],
        "marks": found,
        "turns": turns(analysis),
        "segments": segments(steps),
        "scales": scales(analysis),
    }


# What the page's scripts never read, and weighs most on a long page: the steps (the view and
# the range route carry them) and the token ids (32,000 of each at 32,000 tokens).
NOT_EMBEDDED = ("steps", "response_ids", "response_mask", "virtual_rollout")


def without_steps(analysis: dict[str, Any]) -> dict[str, Any]:
    """The analysis as the page embeds it for its scripts: without the steps and the token ids,
    and with a teacher of another tokenizer said (`alignment: true`) rather than spelled out
    (the server draws the alignment)."""
    lite = {k: v for k, v in analysis.items() if k not in NOT_EMBEDDED}
    if lite.get("alignment"):
        lite["alignment"] = True
    return lite
