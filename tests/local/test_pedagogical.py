"""The pedagogical rollout against its naive twin, its interventions, and the API."""

from __future__ import annotations

import pytest
from support import contexts, tiny_settings
from support.tiny import tiny_pair
from vrollout.local.pedagogical import Policy, RolloutItem, pedagogical_rollout, pedagogical_rollouts
from vrollout.local.reference import naive_pedagogical
from vrollout.pipeline.analyzer import Analyzer

POLICIES = [
    Policy(threshold=0.05, max_new_tokens=24),
    Policy(threshold=0.2, temperature=1.0, top_p=0.9, seed=11, max_new_tokens=24),
    Policy(threshold=1e-6, max_rank=3, temperature=0.8, seed=3, max_new_tokens=24),
]
POLICY_IDS = ["greedy", "sampled-top-p", "rank-limit"]
PAIRS = {
    "other-teacher": lambda: tiny_pair(teacher_seed=5),  # a different teacher: interventions happen
    # One set of weights, two contexts: student and teacher rows share a left-padded batch.
    "self-teacher": lambda: tiny_pair(),
}


def same_rollout(fast, naive, policy):
    """`fast` (a summarized rollout) took the naive loop's steps, with its numbers."""
    assert fast["response_ids"] == [s["token"] for s in naive]
    for token, step in zip(fast["tokens"], naive, strict=True):
        assert token["source"] == ("teacher" if step["intervened"] else "student")
        assert token["student_logprob"] == pytest.approx(step["student_logprob"], abs=1e-4)
        assert token["teacher_logprob"] == pytest.approx(step["teacher_logprob"], abs=1e-4)


@pytest.mark.parametrize("pair_kind", PAIRS)
@pytest.mark.parametrize("policy", POLICIES, ids=POLICY_IDS)
def test_rollout_equals_naive_loop(policy, pair_kind):
    pair = PAIRS[pair_kind]()
    s_ctx, t_ctx = contexts(pair)
    fast = pedagogical_rollout(pair, s_ctx, t_ctx, policy)
    naive = naive_pedagogical(pair, s_ctx, t_ctx, policy)
    same_rollout(fast, naive, policy)
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
    assert fast["num_interventions"] == len(fast["interventions"])
    if pair_kind == "other-teacher":
        assert fast["num_interventions"] > 0


def close_records(a, b):
    """Lists of flat records: equal, numbers within float tolerance."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], abs=1e-4), key
            else:
                assert x[key] == y[key], key


def batch_items(pair):
    """Rollouts of different lengths, contexts, policies and seeds (one repeated: same seed,
    same rollout), and one whose two contexts are the same."""
    tok = pair.student.tokenizer
    s_ctx, t_ctx = contexts(pair)
    other = tok("<|im_start|>user\nName three primes.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    hint = tok("<|im_start|>user\nName three primes. Hint: 2, 3, 5.<|im_end|>\n<|im_start|>assistant\n")[
        "input_ids"
    ]
    sampled = Policy(threshold=0.2, temperature=1.0, top_p=0.9, seed=11, max_new_tokens=20)
    return [
        RolloutItem(s_ctx, t_ctx, Policy(threshold=0.05, max_new_tokens=24), "391"),
        RolloutItem(other, hint, sampled),
        RolloutItem(s_ctx, t_ctx, Policy(**{**vars(sampled), "seed": 12})),
        RolloutItem(
            other, other, Policy(threshold=1e-6, max_rank=3, temperature=0.8, seed=3, max_new_tokens=9)
        ),
        RolloutItem(other, hint, sampled),
    ]


@pytest.mark.parametrize("pair_kind", PAIRS)
def test_batched_rollouts_equal_one_by_one_and_the_naive_loop(pair_kind):
    pair = PAIRS[pair_kind]()
    items = batch_items(pair)
    batched = pedagogical_rollouts(pair, items)
    # Same contexts, same seed: the same rollout (float rounding may differ by batch row).
    assert batched[1]["response_ids"] == batched[4]["response_ids"]
    close_records(batched[1]["tokens"], batched[4]["tokens"])
    for item, got in zip(items, batched, strict=True):
        alone = pedagogical_rollout(
            pair, item.student_context, item.teacher_context, item.policy, item.reference
        )
        assert got["response_ids"] == alone["response_ids"]
        close_records(got["interventions"], alone["interventions"])
        close_records(got["tokens"], alone["tokens"])
        assert got["policy"] == alone["policy"] and got["reached_reference"] == alone["reached_reference"]
        naive = naive_pedagogical(pair, item.student_context, item.teacher_context, item.policy)
        same_rollout(got, naive, item.policy)
    assert len({len(r["response_ids"]) for r in batched}) > 1  # rollouts left the batch at different steps


def test_batched_progress_counts_the_longest_rollout():
    pair = tiny_pair()
    seen = []
    pedagogical_rollouts(pair, batch_items(pair), lambda *args: seen.append(args))
    assert seen[0] == ("pedagogical", 1, 24) and [s[1] for s in seen] == list(range(1, len(seen) + 1))
    assert pedagogical_rollouts(pair, []) == []


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


def without_ids(result):
    return {k: v for k, v in result.items() if k not in ("id", "created_at")}


@pytest.mark.parametrize("pair_kind", PAIRS)
def test_analyzer_batch_equals_each_request(tmp_path, pair_kind):
    """`Analyzer.pedagogical_batch` (what a pedagogical job runs): lines and sweep points decoded
    VROLLOUT_PEDAGOGICAL_BATCH at a time, each result the one its own request gives."""
    analyzer = Analyzer(PAIRS[pair_kind](), tiny_settings(tmp_path, pedagogical_batch=3))
    bodies = [
        {"prompt": "What is 17*23?", "privileged": "391", "reference_answer": "391", "threshold": 0.3,
         "sweep": [0.5, 0.01], "generation": {"max_new_tokens": 12, "temperature": 1.0, "seed": 2}},
        {"prompt": "Name a prime.", "generation": {"max_new_tokens": 7}},
        {"prompt": "Name a prime.", "privileged": "7", "max_rank": 2,
         "generation": {"max_new_tokens": 10, "temperature": 0.7, "seed": 5}},
    ]  # fmt: skip
    preps = [analyzer.prepare_pedagogical(body) for body in bodies]
    steps = []
    batch = analyzer.pedagogical_batch(preps, lambda *args: steps.append(args))
    assert [s for s in steps if s[0] == "pedagogical"] and steps[-1] == ("done", 1, 1)
    for prep, got in zip(preps, batch, strict=True):
        alone = without_ids(analyzer.pedagogical(prep))
        got = without_ids(got)
        assert got.keys() == alone.keys()
        assert got["response_ids"] == alone["response_ids"]
        close_records(got["tokens"], alone["tokens"])
        close_records(got["interventions"], alone["interventions"])
        assert got["sweep"] == alone["sweep"]  # a sweep row holds no float but its threshold
        for key in ("student", "teacher", "policy", "reference_answer", "reached_reference"):
            assert got[key] == alone[key], key
    assert batch[0]["sweep"] is not None and [r["threshold"] for r in batch[0]["sweep"]] == [0.01, 0.5]
    assert analyzer.pedagogical_batch([]) == []
