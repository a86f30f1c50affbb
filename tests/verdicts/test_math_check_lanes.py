"""Issue #24, item 2: an upload's math checks (its sibling index, on a request thread) never hold
up model work. The model's verdicts have helpers of their own (the `model` lane); a request's
checks take the `requests` lane and spend a per-upload budget, past which the rest are skipped
and the lines concerned say why. An analysis without a reference answer asks for no check.

"Held" here is real: the test takes every slot of the requests' helpers itself, as two uploads
stuck on crafted answers would, and releases them when it is done."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from support import tiny_settings, upload
from vrollout.pipeline.analyzer import Analyzer
from vrollout.verdicts import math_check
from vrollout.verdicts.answers import verdict
from vrollout.web.app import create_app

SLOW_ANSWER = r"$\boxed{9^{9^{9^{9}}}}$"  # sympy takes minutes to compare it with 5
JOIN_S = 120  # a bound for a thread that must finish (a helper's start on a loaded machine)


@contextmanager
def requests_lane_held() -> Iterator[None]:
    """Every slot of the requests' math-verify helpers taken, as long as the block runs."""
    pool = math_check._POOLS["requests"]
    for _ in range(math_check.REQUEST_POOL_SIZE):
        pool.slots.acquire()
    try:
        yield
    finally:
        for _ in range(math_check.REQUEST_POOL_SIZE):
            pool.slots.release()


@pytest.fixture
def runs(monkeypatch):
    """The checks each lane's helpers were asked for, as (lane, deadline); they run as ever."""
    asked: list[tuple[str, float]] = []
    for lane, pool in math_check._POOLS.items():

        def recorded(request, deadline_s, lane=lane, run=pool.run):
            asked.append((lane, deadline_s))
            return run(request, deadline_s)

        monkeypatch.setattr(pool, "run", recorded)
    return asked


def test_the_models_checks_go_on_while_the_requests_lane_is_held():
    finished = threading.Event()
    found = []

    def request_check():
        found.append(math_check.check(r"\boxed{4}", "4", lane="requests"))
        finished.set()

    with requests_lane_held():
        waiting = threading.Thread(target=request_check)
        waiting.start()
        model = []
        checker = threading.Thread(target=lambda: model.append(verdict(r"so \boxed{4}", "4")))
        checker.start()
        checker.join(JOIN_S)
        assert model and model[0]["method"] == "math-verify" and model[0]["correct"] is True
        assert not finished.is_set()  # the request's check still waits for its own lane
    waiting.join(JOIN_S)
    assert finished.is_set() and found[0]["equal"] is True


def test_an_analysis_gets_its_verdict_while_uploads_hold_their_checks(tiny, tmp_path, runs):
    settings = tiny_settings(tmp_path)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    with TestClient(app) as client, requests_lane_held():
        body = {"prompt": "hello", "response": r"so \boxed{4}", "reference_answer": "4"}
        resp = client.post("/api/analyze", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["verdict"]["method"] == "math-verify"
        asked = len(runs)
        resp = client.post("/api/analyze", json={"prompt": "hello", "response": "so 4"})
        assert resp.status_code == 200, resp.text
        assert resp.json().get("verdict") is None
    assert runs[:asked] == [("model", settings.math_verify_timeout_s)]
    assert len(runs) == asked  # no reference answer: no check at all


def test_an_uploads_checks_stop_at_its_budget_and_its_lines_say_why(tiny, tmp_path, runs):
    deadline = 0.5
    settings = tiny_settings(tmp_path, math_verify_timeout_s=deadline)
    # every line has the same prompt; the first ones' answers miss every deadline
    slow = [{"prompt": "what is 2+3?", "response": f"{SLOW_ANSWER} ({i})", "reference_answer": "5"}
            for i in range(math_check.BUDGET_MISSES + 3)]  # fmt: skip
    fine = {"prompt": "what is 2+3?", "response": r"so \boxed{5}", "reference_answer": "5"}
    lines = [*slow, fine]
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        resp = upload(client, "\n".join(json.dumps(line) for line in lines), teacher_context="sibling")
    # the budget's misses were spent on the first lines; the rest were never sent to a helper
    assert runs == [("requests", deadline)] * math_check.BUDGET_MISSES
    assert resp.status_code == 422, resp.text
    rejected = resp.json()["rejected"]
    assert len(rejected) == len(lines)
    for r in rejected:
        assert "no successful sibling" in r["error"], r
        assert "math-verify was skipped for the rest of the file" in r["error"], r
        assert f"{math_check.BUDGET_MISSES} checks missed their deadline" in r["error"], r
        assert "4 lines with this prompt judged by the text rule alone" in r["error"], r


def test_a_budget_counts_misses_and_seconds():
    budget = math_check.Budget(misses=2, seconds=10.0)
    assert not budget.spent
    budget.missed = 2
    assert budget.spent and "2 checks missed their deadline" in budget.why()
    budget = math_check.Budget(misses=2, seconds=10.0, spent_s=10.0)
    assert budget.spent and "its checks took 10 s" in budget.why()
    assert math_check.check("anything", "5", lane="requests", budget=budget) is None
    assert budget.skipped == 1
