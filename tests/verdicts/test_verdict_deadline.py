"""Verdicts under a wall-clock deadline (docs/metrics.md, "Verdicts"): math-verify runs in a
helper process that is killed past `Settings.math_verify_timeout_s`, in any thread, so no
response or reference can hang the model worker or a job.

The slow inputs are real: with no limit, math-verify compares `((100)!)!` or `9^{9^{9^{9}}}`
with 5 for minutes (each ran past 30 s in a worker thread, where math-verify has no timeout of
its own; measured with the installed math_verify)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from support import tiny_settings, upload, wait_done
from vrollout.pipeline.analyzer import Analyzer
from vrollout.verdicts import math_check
from vrollout.verdicts.answers import verdict
from vrollout.web.app import create_app

SLOW_REFERENCE = r"$\boxed{((100)!)!}$ (a huge number)"
SLOW_ANSWER = r"$\boxed{9^{9^{9^{9}}}}$"
DEADLINE_S = 1.0
MARGIN_S = 2.0  # killing the helper and reading its end, on a loaded 2-core machine
ORDINARY = [
    ("Hence f has no real-valued zeros.", "0 (i.e., no real-valued zeros)"),
    (r"The answer is \boxed{\frac{1}{2}}", "0.5"),
    (r"so $x \in \{2, 1\}$", r"\{1,2\}"),
    ("17*23 = 381.", "391"),
    (r"It is $\boxed{391}$.", "391"),
    ("It is Lyon.", "Paris"),
    (r"$\boxed{x^2+2x+1}$", "(x+1)^2"),
    (r"so the roots are $x = \pm\sqrt{2}$", r"\sqrt{2}"),
]


@pytest.fixture
def deadlines(monkeypatch):
    """The deadline of every check the helpers are asked for (the checks run as ever)."""
    asked, run = [], math_check._POOL.run

    def recorded(request, deadline_s):
        asked.append(deadline_s)
        return run(request, deadline_s)

    monkeypatch.setattr(math_check._POOL, "run", recorded)
    return asked


def in_thread(func):
    found = []
    worker = threading.Thread(target=lambda: found.append(func()))
    worker.start()
    worker.join(120)
    assert found, "the worker thread did not finish"
    return found[0]


def test_a_slow_check_in_a_worker_thread_ends_at_the_deadline():
    # a helper is up: its start-up is not timed
    in_thread(lambda: verdict(r"\boxed{4}", "4", deadline_s=DEADLINE_S))
    started = math_check._POOL.started
    begin = time.monotonic()
    found = in_thread(
        lambda: verdict("It is a huge number: $\\boxed{5}$", SLOW_REFERENCE, deadline_s=DEADLINE_S)
    )
    assert time.monotonic() - begin < DEADLINE_S + MARGIN_S
    # math-verify did not decide: the text rule did ("a huge number" is a textual form)
    assert found == {
        "correct": True, "method": "text", "parsed_answer": None, "parsed_reference": None,
        "extractor": None, "restated": False, "text_form": "a huge number",
    }  # fmt: skip
    found = in_thread(lambda: verdict(SLOW_ANSWER, "5", deadline_s=DEADLINE_S))
    assert (found["correct"], found["method"], found["parsed_answer"]) == (False, "text", None)
    # the killed helper is replaced by a fresh one, and the next ordinary check works
    found = in_thread(lambda: verdict(r"The answer is \boxed{\frac{1}{2}}", "0.5", deadline_s=DEADLINE_S))
    assert (found["correct"], found["method"], found["parsed_answer"]) == (
        True,
        "math-verify",
        r"\frac{1}{2}",
    )
    assert math_check._POOL.started > started


def test_a_thread_gets_the_main_threads_verdicts_and_math_verifys_own_reading():
    for text, reference in ORDINARY:
        main = verdict(text, reference)
        assert in_thread(lambda text=text, reference=reference: verdict(text, reference)) == main
        direct = math_check.compare(text, reference)  # math-verify in this process, no helper
        assert (main["parsed_answer"], main["parsed_reference"]) == (direct["answer"], direct["reference"])
        assert (main["method"] == "math-verify") == (
            direct["both"] and (direct["equal"] or not main["correct"])
        )


def test_a_slow_reference_does_not_hang_an_analysis_or_a_job(tiny, tmp_path, deadlines):
    settings = tiny_settings(tmp_path, math_verify_timeout_s=DEADLINE_S)
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        body = {
            "prompt": "hello",
            "response": r"a huge number: $\boxed{5}$",
            "reference_answer": SLOW_REFERENCE,
        }
        resp = client.post("/api/analyze", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["verdict"] == {
            "correct": True, "method": "text", "parsed_answer": None, "parsed_reference": None,
            "extractor": None, "restated": False, "text_form": "a huge number",
        }  # fmt: skip
        lines = [
            {"prompt": "hello", "response": SLOW_ANSWER, "reference_answer": "5"},
            {"prompt": "hello", "response": r"so \boxed{4}", "reference_answer": "4"},
        ]
        resp = upload(client, "\n".join(json.dumps(line) for line in lines))
        assert resp.status_code == 201, resp.text
        job = resp.json()["job"]
        assert wait_done(client, job["id"], timeout=120)["state"] == "done"
        items = client.get(f"/api/jobs/{job['id']}/items").json()
        assert [i["state"] for i in items] == ["done", "done"], items
        found = [client.get(f"/api/analyses/{i['analysis_id']}").json()["verdict"] for i in items]
    assert [(v["correct"], v["method"]) for v in found] == [(False, "text"), (True, "math-verify")]
    # the setting reached every verdict (the analysis's, each job line's), passed, not set globally
    assert deadlines and set(deadlines) == {DEADLINE_S}
    assert not hasattr(math_check, "set_deadline")


def test_a_helper_whose_parent_died_is_ended_by_its_cpu_cap():
    """A watcher thread could not end it (sympy's big-integer work holds the GIL): the kernel does."""
    busy = "from vrollout.verdicts import math_check; math_check._cpu_cap(1.0)\nwhile True: pass"
    done = subprocess.run([sys.executable, "-c", busy], timeout=60)
    assert done.returncode == -signal.SIGXCPU
