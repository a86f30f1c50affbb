"""A job of ProcessBench-shaped lines: uploaded as the steps joined, and its error-localization
metrics served from the stored analyses (JSON and a page), equal to what the CLI computes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from support import GOOD, REPO, assert_error, upload, wait_done
from vrollout.metrics.localization import TOKEN_SCORERS
from vrollout.metrics.localization_eval import Setup
from vrollout.report.localization import localization_result


def generated(problems: int = 3) -> str:
    script = REPO / "examples" / "make_localization_data.py"
    args = [sys.executable, str(script), "--problems", str(problems), "--per-problem", "2", "--seed", "2"]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def job(tiny_client):
    xss = {"id": "<img src=x onerror=alert(1)>", "prompt": "q", "steps": ["1 + 1 = 3.", "So 3."], "label": 0}
    text = (
        generated() + json.dumps(xss) + "\n" + json.dumps({"prompt": "q", "steps": ["a"], "label": 4}) + "\n"
    )
    created = upload(tiny_client, text).json()
    assert created["warnings"] == [] and [r["line"] for r in created["rejected"]] == [8]
    assert "label must be -1 or a step index (0..0), got 4" in created["rejected"][0]["error"]
    assert wait_done(tiny_client, created["job"]["id"], timeout=300)["state"] == "done"
    return created["job"]["id"]


def test_job_metrics_equal_the_harness_on_the_stored_analyses(tiny_client, job, tiny):
    body = tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=300&folds=3").json()
    assert body["scorers"] == list(TOKEN_SCORERS) and body["setup"] == {
        "folds": 3,
        "seed": 0,
        "bootstrap": 300,
    }
    analyses = tiny_client.app.state.jobs.analyses(job)
    first = analyses[0]
    assert first["response_text"] == "\n\n".join(first["trajectory"]["meta"]["steps"])
    direct = localization_result(analyses, tiny.student.tokenizer, False, Setup(folds=3, bootstrap=300))
    assert body["metrics"] == json.loads(json.dumps(direct.metrics))
    preds = body["predictions"]
    assert [p["line"] for p in preds] == list(range(1, 8)) and preds[-1][
        "id"
    ] == "<img src=x onerror=alert(1)>"
    labels = np.array([p["label"] for p in preds])
    for name in TOKEN_SCORERS:
        predicted = np.array([p["predicted"][name] for p in preds])
        assert body["metrics"][name]["acc_correct"] == pytest.approx(np.mean(predicted[labels < 0] == -1))
        assert body["metrics"][name]["acc_error"] == pytest.approx(
            np.mean((predicted == labels)[labels >= 0])
        )


def test_the_pages_show_the_table_escaped(tiny_client, job):
    page = tiny_client.get(f"/jobs/{job}")
    assert 'id="localization"' in page.text and "/static/localization.js" in page.text
    html = tiny_client.get(f"/jobs/{job}/localization?bootstrap=50").text
    assert 'id="localization-table"' in html and "max_reverse_kl" in html and "position (baseline)" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<script src="/static/report.js"></script>' in html


def test_jobs_without_steps_and_bad_options_are_clear_errors(tiny_client, job):
    plain = upload(tiny_client, json.dumps(GOOD) + "\n").json()["job"]["id"]
    wait_done(tiny_client, plain)
    assert_error(tiny_client.get(f"/api/jobs/{plain}/localization"), 422, "no analysed line carries steps")
    page = tiny_client.get(f"/jobs/{plain}").text  # so its page never asks for the table
    assert 'id="localization"' not in page and "/static/localization.js" not in page
    assert_error(tiny_client.get("/api/jobs/nope/localization"), 404)
    assert_error(
        tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=999999"), 422, "VROLLOUT_MAX_BOOTSTRAP"
    )
    assert_error(tiny_client.get(f"/api/jobs/{job}/localization?folds=1"), 422)


def test_metrics_are_computed_once_per_job_contents_and_setup(tiny_client, job):
    """The second GET (JSON or page) of the same job and settings is served from the cache; other
    settings compute again; a deleted analysis changes the job's contents, so it computes again."""
    lane_before = getattr(tiny_client.app.state, "localization_lane", None)
    before = 0 if lane_before is None else lane_before.computed
    first = tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=40").json()
    lane = tiny_client.app.state.localization_lane
    assert lane.computed == before + 1
    assert tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=40").json() == first
    assert tiny_client.get(f"/jobs/{job}/localization?bootstrap=40").status_code == 200
    assert lane.computed == before + 1  # both from the cache
    tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=40&seed=1")
    assert lane.computed == before + 2
    analysis = tiny_client.get(f"/api/jobs/{job}/items").json()[0]["analysis_id"]
    assert tiny_client.delete(f"/api/analyses/{analysis}").status_code == 200
    again = tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=40").json()
    assert lane.computed == before + 3 and len(again["predictions"]) == len(first["predictions"]) - 1


def test_the_lane_runs_one_computation_at_a_time_and_refuses_past_the_queue():
    """Held computations (an Event, not a timer): the same key shares one computation, a fifth
    distinct key is a 429 with Retry-After, and nothing runs two at once."""
    import asyncio
    import threading

    from vrollout.errors import QueueFull
    from vrollout.web.routes.localization import MAX_PENDING, LocalizationLane

    release, running, most = threading.Event(), [0], [0]

    def compute(value):
        def run():
            running[0] += 1
            most[0] = max(most[0], running[0])
            release.wait(30)
            running[0] -= 1
            return value

        return run

    async def scenario():
        lane = LocalizationLane()
        waits = [asyncio.ensure_future(lane.get((k,), compute(k))) for k in range(MAX_PENDING)]
        shared = asyncio.ensure_future(lane.get((0,), compute("never")))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await lane.get(("one more",), compute("x"))
        release.set()
        results = await asyncio.gather(*waits, shared)
        return lane, refused.value, results

    lane, refused, results = asyncio.run(scenario())
    assert refused.status == 429 and refused.headers["Retry-After"]
    assert results == [*range(MAX_PENDING), 0] and lane.computed == MAX_PENDING and most[0] == 1


# --- Localization you can see (#28) ---------------------------------------------------------------


def test_each_line_links_its_analysis_and_shows_its_steps(tiny_client, job):
    body = tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=50").json()
    items = {i["line"]: i["analysis_id"] for i in tiny_client.get(f"/api/jobs/{job}/items").json()}
    assert [p["analysis_id"] for p in body["predictions"]] == [items[p["line"]] for p in body["predictions"]]
    html = tiny_client.get(f"/jobs/{job}/localization?bootstrap=50").text
    for p in body["predictions"]:
        assert f'href="/analyses/{p["analysis_id"]}"' in html
    analysis = tiny_client.get(f"/api/analyses/{items[1]}").json()
    first_step = analysis["trajectory"]["meta"]["steps"][0]
    assert first_step.replace("'", "&#39;") in html or first_step in html
    assert "labelled first wrong step" in html


def test_a_heat_map_per_scorer_and_the_best_scorer_marked(tiny_client, job):
    body = tiny_client.get(f"/api/jobs/{job}/localization?bootstrap=50").json()
    html = tiny_client.get(f"/jobs/{job}/localization?bootstrap=50").text
    f1 = {name: body["metrics"][name]["f1"] for name in body["scorers"]}
    best = max(body["scorers"], key=lambda n: (f1[n], -body["scorers"].index(n)))
    if f1[best] > 0:
        assert f'id="best-scorer">Best scorer: <b>★ <code>{best}</code>' in html
        assert html.count('data-best="true"') == 1
    else:  # no scorer found a wrong step: none is better than another
        assert "none is marked best" in html and 'data-best="true"' not in html
    for name in body["scorers"]:
        assert f'id="heat-{name}"' in html
    labelled = sum(1 for p in body["predictions"] if p["label"] >= 0)
    assert html.count('<td class="lab') == labelled * len(body["scorers"])


def test_the_best_scorer_is_the_highest_f1_above_zero():
    from vrollout.metrics.localization_eval import Setup
    from vrollout.report.localization import LocalizationResult

    def best(*f1):
        metrics = {f"s{i}": {"f1": v} for i, v in enumerate(f1)}
        return LocalizationResult(metrics, [], list(metrics), Setup()).best

    assert best(0.2, 0.5, 0.5) == "s1" and best(0.0, 0.0) is None and best(None, 0.1) == "s1"


def test_heat_map_shades_rank_the_scores():
    from vrollout.metrics.localization_eval import Setup
    from vrollout.report.localization import LocalizationResult, heat_map

    predictions = [
        {"line": 1, "id": "a", "label": 1, "predicted": {"s": 0}, "scores": {"s": [0.5, 9.0, None]}},
        {"line": 2, "id": "b", "label": -1, "predicted": {"s": -1}, "scores": {"s": [0.1]}},
    ]
    result = LocalizationResult({}, predictions, ["s"], Setup())
    grid = heat_map(result, "s")
    assert grid["steps"] == 3 and [len(r["cells"]) for r in grid["rows"]] == [3, 1]
    shades = [c["shade"] for c in grid["rows"][0]["cells"]]
    assert shades == [0.5, 1.0, None] and grid["rows"][1]["cells"][0]["shade"] == 0.0
    assert [c["label"] for c in grid["rows"][0]["cells"]] == [False, True, False]
    assert [c["predicted"] for c in grid["rows"][0]["cells"]] == [True, False, False]


def test_the_analysis_of_a_labelled_line_shows_its_steps(tiny_client, job):
    from vrollout.report.steps_overlay import steps_overlay

    items = tiny_client.get(f"/api/jobs/{job}/items").json()
    xss = next(i for i in items if i["line"] == 7)  # the hand-written line: 2 steps, label 0
    analysis = tiny_client.get(f"/api/analyses/{xss['analysis_id']}").json()
    overlay = steps_overlay(analysis)
    steps = overlay["steps"]
    assert [s["text"] for s in steps] == ["1 + 1 = 3.", "So 3."] and overlay["label"] == 0
    assert steps[0]["start"] == 0 and steps[-1]["stop"] == len(analysis["steps"])
    assert steps[0]["stop"] == steps[1]["start"] == overlay["boundaries"][0]
    assert [s["wrong"] for s in steps] == [True, False]
    tokens = "".join(s["token"] for s in analysis["steps"][: steps[0]["stop"]])
    assert tokens.strip().startswith("1 + 1 = 3.")
    page = tiny_client.get(f"/analyses/{xss['analysis_id']}").text
    assert 'id="steps-overlay"' in page and 'id="labelled-step">step 0</b>' in page
    assert f'data-boundaries="[{overlay["boundaries"][0]}]"' in page and "/static/steps_overlay.js" in page
    plain = tiny_client.get(f"/analyses/{tiny_client.post('/api/analyze', json=GOOD).json()['id']}").text
    assert 'id="steps-overlay"' not in plain
