"""Recovery: answer matching, the prefixes tried, and a case whose answer is known."""

from __future__ import annotations

import pytest
from vrollout.pipeline.recovery import ALL_PREFIXES_UP_TO, recovery_positions
from vrollout.verdicts.answers import answer_matches


@pytest.mark.parametrize(
    "text,reference,expected",
    [
        ("17*23 = 391.", "391", True),
        ("17*23 = 391.0", "391", True),
        ("so the answer is 391", "391.00", True),
        ("17*23 = 381.", "391", False),
        ("391 is wrong, it is 392", "391", False),  # the last number counts
        ("1,234 apples", "1234", True),
        ("no number", "391", False),
        ("The capital is Paris.", "paris", True),
        ("The capital is Lyon.", "Paris", False),
    ],
)
def test_answer_matches(text, reference, expected):
    assert answer_matches(text, reference) is expected


def test_positions_every_prefix_for_short_responses():
    assert recovery_positions(10, [3]) == (list(range(10)), 1)


def test_positions_stride_plus_divergences_for_long_ones():
    positions, stride = recovery_positions(1000, [7, 501, 999])
    assert stride == 16 and positions[:4] == [0, 7, 8, 16] and {501, 502, 999} <= set(positions)
    assert 1000 not in positions  # after the last token: the student's own response, not a prefix
    assert len(positions) <= 1000 // stride + 6
    assert ALL_PREFIXES_UP_TO < 1000


def test_recovery_on_tiny_model_with_a_known_answer(tiny_client):
    """Built so the answer is known: the reference is the teacher's own greedy answer from the
    empty prefix, so position 0 must succeed and the student's (different) text must fail."""
    base = {"prompt": "hi", "response": "hello the", "privileged": "a hint", "continuation_tokens": 16}
    first = tiny_client.post("/api/analyze", json=base).json()
    greedy = first["steps"][0]["teacher_continuation"]["text"].replace("<|im_end|>", "")
    reference = greedy.strip() or "zzz"
    body = {**base, "reference_answer": reference, "recovery": True, "recovery_max_new_tokens": 16}
    a = tiny_client.post("/api/analyze", json=body).json()
    rec = a["recovery"]
    assert [p["position"] for p in rec["points"]] == list(range(len(a["steps"])))
    assert rec["points"][0]["success"] is True and rec["student_success"] is False
    last = rec["last_recoverable"]
    assert last == max(p["position"] for p in rec["points"] if p["success"])
    kl = [s["reverse_kl"] for s in a["steps"]]
    assert a["summary"]["last_recoverable"] == last
    assert a["summary"]["reverse_kl_share_after_last_recoverable"] == pytest.approx(
        sum(kl[last + 1 :]) / sum(kl)
    )


def test_recovery_needs_a_reference_answer(tiny_client):
    r = tiny_client.post("/api/analyze", json={"prompt": "x", "response": "y", "recovery": True})
    assert r.status_code == 422 and "reference_answer" in r.json()["error"]
