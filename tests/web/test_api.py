"""The JSON API on the tiny model: every input format, generation, storage, bad input."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from support import assert_error, tiny_settings
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app


def ids_of(client, text):
    return client.app.state.analyzer.pair.student.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_health_and_models(tiny_client):
    assert tiny_client.get("/api/health").json()["ok"] is True
    models = tiny_client.get("/api/models").json()
    assert models["student"]["name"] == "tiny-student"
    assert models["shared_weights"] is True and models["backend"] == "local"
    assert models["student"]["vocab_size"] == 263
    assert "{privileged}" in models["teacher_template"]
    assert tiny_client.get("/openapi.json").json()["paths"]["/api/analyze"]


def test_prompt_response_with_privileged(tiny_client):
    body = {"prompt": "What is 17*23?", "response": "17*23 = 381.", "privileged": "391"}
    a = tiny_client.post("/api/analyze", json=body).json()
    assert a["retokenized"] is True
    assert len(a["steps"]) == len(a["response_ids"]) == a["summary"]["tokens"]
    assert "391" in a["teacher"]["context_text"] and "391" not in a["student"]["context_text"]
    assert "Reference solution (privileged" in a["teacher"]["context_text"]
    assert a["teacher"]["privileged"] == "391"
    assert a["virtual_rollout"]["token_ids"] == [s["teacher_top1_id"] for s in a["steps"]]
    for s in a["steps"]:
        assert s["advantage"] == pytest.approx(s["teacher_logprob"] - s["student_logprob"])
        assert s["agree"] == (s["teacher_top1_id"] == s["token_id"])
        assert len(s["teacher_topk"]) == 5 and s["teacher_continuation"] is None
    assert a["summary"]["divergences"] == sum(not s["agree"] for s in a["steps"])


def test_all_formats_give_the_same_numbers(tiny_client):
    plain = {"prompt": "Hi there", "response": "hello the world"}
    messages = {
        "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "hello the world"},
        ]
    }
    trl = {
        "prompt": [{"role": "user", "content": "Hi there"}],
        "completion": [{"role": "assistant", "content": "hello the world"}],
    }
    # A prompt of messages with the response as text (as a --map of a log's columns gives it)
    messages_and_text = {"messages": messages["messages"][:1], "response": "hello the world"}
    trl_and_text = {"prompt": trl["prompt"], "response": "hello the world"}
    bodies = (plain, messages, trl, messages_and_text, trl_and_text)
    results = [tiny_client.post("/api/analyze", json=b).json() for b in bodies]
    ctx = results[0]["student"]["context_ids"]
    tokens = {"prompt_ids": ctx, "response_ids": results[0]["response_ids"]}
    results.append(tiny_client.post("/api/analyze", json=tokens).json())
    ref = [s["reverse_kl"] for s in results[0]["steps"]]
    for r in results:
        assert r["response_ids"] == results[0]["response_ids"]
        assert r["student"]["context_ids"] == ctx
        assert [s["reverse_kl"] for s in r["steps"]] == pytest.approx(ref, abs=1e-6)
    assert results[-1]["retokenized"] is False
    assert results[-1]["trajectory"]["format"] == "token_ids"
    for both in (
        {**messages, "response": "hello"},  # an assistant message already, and a response
        {**trl, "response": "hello"},
        {**messages_and_text, "completion": trl["completion"]},
    ):
        assert tiny_client.post("/api/analyze", json=both).status_code == 422


def test_token_level_teacher_context(tiny_client):
    s_ids = ids_of(tiny_client, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")
    t_ids = ids_of(tiny_client, "<|im_start|>user\nQ hint<|im_end|>\n<|im_start|>assistant\n")
    body = {"prompt_ids": s_ids, "teacher_prompt_ids": t_ids, "response_ids": [70, 71, 72]}
    a = tiny_client.post("/api/analyze", json=body).json()
    assert a["teacher"]["context_ids"] == t_ids and a["student"]["context_ids"] == s_ids
    assert any(s["reverse_kl"] > 0 for s in a["steps"])


def test_prompt_only_generation_is_seeded(tiny_client):
    body = {"prompt": "Tell me", "generation": {"max_new_tokens": 12, "temperature": 1.0, "seed": 5}}
    a = tiny_client.post("/api/analyze", json=body).json()
    b = tiny_client.post("/api/analyze", json=body).json()
    c = tiny_client.post("/api/analyze", json={**body, "generation": {**body["generation"], "seed": 6}})
    assert a["response_ids"] == b["response_ids"] and a["id"] != b["id"]
    assert c.json()["response_ids"] != a["response_ids"]
    assert a["generation"] == {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "seed": 5}
    assert 1 <= len(a["response_ids"]) <= 12


def test_continuations_in_analysis(tiny_client):
    a = tiny_client.post(
        "/api/analyze", json={"prompt": "x", "response": "hello the", "continuation_tokens": 3}
    ).json()
    for s in a["steps"]:
        cont = s["teacher_continuation"]
        assert 1 <= len(cont["token_ids"]) <= 3 and cont["token_ids"][0] == s["teacher_top1_id"]


def test_stored_analyses_survive_restart(tiny, tmp_path):
    settings = tiny_settings(tmp_path)
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        first = client.post("/api/analyze", json={"prompt": "a", "response": "hello"}).json()
        second = client.post("/api/analyze", json={"prompt": "b", "response": "the"}).json()
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        assert client.get(f"/api/analyses/{first['id']}").json() == first
        listing = client.get("/api/analyses", params={"limit": 1}).json()
        assert listing["total"] == 2 and [i["id"] for i in listing["items"]] == [second["id"]]
        page2 = client.get("/api/analyses", params={"limit": 1, "offset": 1}).json()
        assert page2["items"][0]["id"] == first["id"]
        assert page2["items"][0]["preview"] == "a"
        assert_error(client.get("/api/analyses/nope"), 404, "nope")


@pytest.mark.parametrize(
    "body,status,words",
    [
        ({"prompt": "x", "response": ""}, 422, ["empty"]),
        ({"prompt": "x", "response_ids": [1, 2]}, 422, ["prompt_ids"]),
        ({"prompt_ids": [1, 2], "response_ids": [5, 99999]}, 422, ["response_ids[1]", "99999", "vocabulary"]),
        ({"prompt_ids": [1, 2], "response_ids": [5, -1]}, 422, ["response_ids[1]"]),
        ({"prompt_ids": [1, 2], "response_ids": [5], "privileged": "x"}, 422, ["teacher_prompt_ids"]),
        ({"response": "only"}, 422, ["prompt"]),
        ({"prompt": 5, "response": "x"}, 422, ["prompt"]),
        ({"messages": [{"role": "user"}]}, 422, ["content"]),
        ({"prompt": "x", "response": "y", "top_k": 500}, 422, ["top_k"]),
        ({"prompt": "x", "response": "y", "continuation_tokens": 99}, 422, ["continuation_tokens"]),
        ({"prompt": "x", "generation": {"max_new_tokens": 10**6}}, 422, ["max_new_tokens"]),
        ({"prompt": "x", "response": "y", "privilged": "typo"}, 422, ["privilged"]),
        ({"prompt": "x", "response": "hello " * 400}, 413, ["response", "limit"]),
    ],
)
def test_bad_input_gets_a_clear_4xx(tiny_client, body, status, words):
    assert_error(tiny_client.post("/api/analyze", json=body), status, *words)
    assert tiny_client.get("/api/health").status_code == 200


def test_malformed_json_and_oversized_body(tiny, tmp_path):
    settings = tiny_settings(tmp_path, max_request_bytes=1000)
    with TestClient(create_app(settings, analyzer=Analyzer(tiny, settings))) as client:
        r = client.post(
            "/api/analyze", content=b'{"prompt": "x",', headers={"content-type": "application/json"}
        )
        assert_error(r, 400, "malformed JSON")
        big = {"prompt": "x" * 2000, "response": "y"}
        assert_error(client.post("/api/analyze", json=big), 413, "1000 bytes")
        ok = client.post("/api/analyze", json={"prompt": "x", "response": "hello"})
        assert ok.status_code == 200
