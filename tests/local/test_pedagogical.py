"""The pedagogical rollout against its naive twin, its interventions, and the API."""

from __future__ import annotations

import pytest
from support import contexts
from support.tiny import tiny_pair
from vrollout.local.pedagogical import Policy, pedagogical_rollout
from vrollout.local.reference import naive_pedagogical


@pytest.mark.parametrize(
    "policy",
    [
        Policy(threshold=0.05, max_new_tokens=24),
        Policy(threshold=0.2, temperature=1.0, top_p=0.9, seed=11, max_new_tokens=24),
        Policy(threshold=1e-6, max_rank=3, temperature=0.8, seed=3, max_new_tokens=24),
    ],
    ids=["greedy", "sampled-top-p", "rank-limit"],
)
def test_rollout_equals_naive_loop(policy):
    pair = tiny_pair(teacher_seed=5)  # a different teacher: interventions happen
    s_ctx, t_ctx = contexts(pair)
    fast = pedagogical_rollout(pair, s_ctx, t_ctx, policy)
    naive = naive_pedagogical(pair, s_ctx, t_ctx, policy)
    assert fast["response_ids"] == [s["token"] for s in naive]
    assert [i["position"] for i in fast["interventions"]] == [
        t for t, s in enumerate(naive) if s["intervened"]
    ]
    for i in fast["interventions"]:
        step = naive[i["position"]]
        assert i["proposal_id"] == step["proposal"] and i["substitute_id"] == step["token"]
        assert i["student_surprisal"] == pytest.approx(-step["student_logprob"], abs=1e-4)
        unacceptable = i["proposal_teacher_prob"] < policy.threshold or (
            policy.max_rank is not None and i["proposal_teacher_rank"] > policy.max_rank
        )
        assert unacceptable
    assert fast["num_interventions"] == len(fast["interventions"]) > 0


def test_identical_teacher_never_intervenes_when_greedy(tiny):
    s_ctx, _ = contexts(tiny)
    run = pedagogical_rollout(tiny, s_ctx, s_ctx, Policy(threshold=0.01, max_new_tokens=16))
    assert run["num_interventions"] == 0
    assert all(t["source"] == "student" for t in run["tokens"])


def test_pedagogical_api_and_sweep(tiny_client):
    body = {
        "prompt": "What is 17*23?",
        "privileged": "391",
        "reference_answer": "391",
        "threshold": 0.3,
        "sweep": [0.5, 0.01, 0.3],
        "generation": {"max_new_tokens": 12, "temperature": 1.0, "seed": 2},
    }
    r = tiny_client.post("/api/pedagogical", json=body).json()
    assert r["policy"]["threshold"] == 0.3 and len(r["tokens"]) == len(r["response_ids"]) <= 12
    assert r["reached_reference"] in (True, False)
    assert [row["threshold"] for row in r["sweep"]] == [0.01, 0.3, 0.5]
    row = next(row for row in r["sweep"] if row["threshold"] == 0.3)
    assert row["num_interventions"] == r["num_interventions"]  # same seed, same run
    counts = [row["num_interventions"] for row in r["sweep"]]
    assert counts[0] <= counts[-1]  # a stricter teacher steps in at least as often here


def test_pedagogical_from_a_stored_analysis(tiny_client):
    a = tiny_client.post(
        "/api/analyze", json={"prompt": "hi", "response": "hello", "privileged": "p", "reference_answer": "7"}
    ).json()
    r = tiny_client.post(
        "/api/pedagogical", json={"analysis_id": a["id"], "generation": {"max_new_tokens": 5}}
    )
    body = r.json()
    assert body["student"]["context_ids"] == a["student"]["context_ids"]
    assert body["teacher"]["context_ids"] == a["teacher"]["context_ids"]
    assert body["reference_answer"] == "7" and body["analysis_id"] == a["id"]


@pytest.mark.parametrize(
    "body,word",
    [
        ({"prompt": "x", "threshold": 0}, "threshold"),
        ({"prompt": "x", "threshold": 1.5}, "threshold"),
        ({"prompt": "x", "max_rank": 0}, "max_rank"),
        ({"prompt": "x", "sweep": [0.1, 2]}, "sweep[1]"),
        ({"prompt": "x", "sweep": []}, "sweep"),
        ({"analysis_id": "nope"}, "nope"),
        ({"prompt": "x", "generation": {"max_new_tokens": 0}}, "max_new_tokens"),
    ],
)
def test_bad_pedagogical_settings(tiny_client, body, word):
    r = tiny_client.post("/api/pedagogical", json=body)
    assert 400 <= r.status_code < 500 and word in r.json()["error"], r.text
