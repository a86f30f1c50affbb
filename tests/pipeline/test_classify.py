"""Teachability and surface-or-fork fields of an analysis's steps, and their summary counts
(core/analysis.py `classify_steps`, `summarize`), on hand-built steps."""

from __future__ import annotations

from typing import Any

from vrollout.pipeline.assembly import classify_steps, summarize

# The student wrote "so 17 * 23 = 381 ." (ids stand for words); the teacher diverges at 2
# ("times": a rewording that re-joins) and at 5 ("391": a fork).
RESPONSE = [10, 17, 30, 23, 40, 381, 50]
TOP1 = {2: 31, 5: 391}
CONTINUATIONS = {2: [31, 23, 40, 381], 5: [391, 60, 70, 80]}


def steps(continuations: bool, student_topk: dict[int, list[int]]) -> list[dict[str, Any]]:
    out = []
    for t, y in enumerate(RESPONSE):
        top1 = TOP1.get(t, y)
        cont = CONTINUATIONS.get(t, [top1]) if continuations else None
        out.append(
            {
                "position": t,
                "token_id": y,
                "agree": top1 == y,
                "teacher_top1_id": top1,
                "reverse_kl": 1.0 if t in TOP1 else 0.1,
                "forward_kl": 0.0,
                "advantage": 0.0,
                "student_logprob": -1.0,
                "teacher_logprob": -1.0,
                "student_topk": [{"token_id": i} for i in student_topk.get(t, [y])],
                "teacher_continuation": None if cont is None else {"token_ids": cont},
                "teacher_mass_on_student_topk": 0.5,
            }
        )
    return out


def recovery(success: dict[int, bool], student_success: bool = False) -> dict[str, Any]:
    return {
        "points": [{"position": t, "success": s} for t, s in success.items()],
        "student_success": student_success,
    }


def test_surface_fork_and_a_fork_that_matters() -> None:
    s = steps(True, {2: [30, 31], 5: [381, 382]})
    rec = recovery({t: t <= 5 for t in range(7)})  # the teacher recovers up to the fork at 5
    assert classify_steps(s, RESPONSE, 2, 4, rec) == (True, True)
    assert [x["divergence_kind"] for x in s] == [None, None, "surface", None, None, "fork", None]
    assert [x["fork_matters"] for x in s] == [None] * 5 + [True, None]
    assert [x["correction_in_student_topk"] for x in s] == [None, None, True, None, None, False, None]
    summary = summarize(s, classified=True, recovered=True)
    assert summary["divergences"] == 2 and summary["divergences_classified"] == 2
    assert summary["divergences_surface"] == 1 and summary["divergences_fork"] == 1
    assert summary["forks_that_matter"] == 1 and summary["divergences_in_student_topk"] == 1
    assert summary["teacher_mass_on_student_topk_mean"] == 0.5


def test_a_fork_after_which_the_teacher_still_recovers_does_not_matter() -> None:
    s = steps(True, {})
    classify_steps(s, RESPONSE, 2, 4, recovery(dict.fromkeys(range(7), True)))
    assert s[5]["fork_matters"] is False
    assert summarize(s, classified=True, recovered=True)["forks_that_matter"] == 0


def test_nulls_where_not_computed() -> None:
    s = steps(False, {})
    assert classify_steps(s, RESPONSE, 2, 0, None) == (False, False)
    assert all(x["divergence_kind"] is None and x["fork_matters"] is None for x in s)
    summary = summarize(s)
    for name in ("divergences_classified", "divergences_surface", "divergences_fork", "forks_that_matter"):
        assert summary[name] is None, name
    # Continuations without recovery: counts, but no forks that matter.
    s = steps(True, {})
    classify_steps(s, RESPONSE, 2, 4, None)
    summary = summarize(s, classified=True)
    assert summary["divergences_fork"] == 1 and summary["forks_that_matter"] is None
    # A window of one token: its continuation is only the top-1, nothing to re-join with.
    s = steps(True, {})
    assert classify_steps(s, RESPONSE, 2, 1, None) == (False, False)
    assert all(x["divergence_kind"] is None for x in s)
    # top_k = 0: no student top-k, so no teachability.
    s = [{**x, "teacher_mass_on_student_topk": None} for x in steps(False, {})]
    classify_steps(s, RESPONSE, 0, 0, None)
    assert all(x["correction_in_student_topk"] is None for x in s)
    summary = summarize(s)
    assert (
        summary["teacher_mass_on_student_topk_mean"] is None
        and summary["divergences_in_student_topk"] is None
    )
    # Steps stored before these fields existed.
    old = [{k: v for k, v in x.items() if k != "teacher_mass_on_student_topk"} for x in steps(False, {})]
    assert summarize(old)["teacher_mass_on_student_topk_mean"] is None


class Sliced(list):
    """Response ids that count the ids copied by slicing them: the classifier's work, no clock."""

    copied = 0

    def __getitem__(self, index):  # type: ignore[override]
        got = super().__getitem__(index)
        if isinstance(index, slice):
            Sliced.copied += len(got)
        return got


def test_each_divergence_looks_at_its_window_only_not_the_response_before_it() -> None:
    # A long response where every token diverges and the teacher's continuation never re-joins:
    # classifying it copies a window per divergence, not the response up to each one (quadratic
    # on a 32,000-token response).
    n, window = 2000, 4
    response = Sliced(range(n))
    s = [
        {
            "position": t,
            "agree": False,
            "scored": True,
            "teacher_top1_id": -1,
            "student_topk": [],
            "teacher_continuation": {"token_ids": [-1, -2, -3, -4]},
        }
        for t in range(n)
    ]
    Sliced.copied = 0
    classify_steps(s, response, 0, window, None)
    assert {x["divergence_kind"] for x in s} == {"fork"}
    assert Sliced.copied <= 4 * window * n


def test_a_rejoin_past_the_end_of_the_divergences_turn_does_not_count() -> None:
    # The student's turn is 0..3 and diverges at 1; context follows at 4..6, within the window,
    # and matches the teacher's continuation there: not a re-join (that text is not the student's)
    response = [10, 11, 12, 13, 20, 21, 22]
    s = [
        {
            "position": t,
            "agree": t != 1,
            "scored": t < 4,
            "teacher_top1_id": 99 if t == 1 else y,
            "student_topk": [],
            "teacher_continuation": {"token_ids": [99, 20, 21, 22]} if t == 1 else None,
        }
        for t, y in enumerate(response)
    ]
    classify_steps(s, response, 0, 4, None)
    assert s[1]["divergence_kind"] == "fork"
    s[1]["teacher_continuation"] = {"token_ids": [99, 11, 12, 13]}  # re-joins within the turn
    classify_steps(s, response, 0, 4, None)
    assert s[1]["divergence_kind"] == "surface"
