"""One validation path (core/validation.py): the same models check API bodies, uploaded lines, the
CLI's files and the Python API, with the settings' limits as bounds (shown in /docs); text is
refused by its length before it is tokenized. Tiny model."""

from __future__ import annotations

import json

import pytest
import vrollout
from fastapi.testclient import TestClient
from support import GOOD, assert_error, tiny_settings, upload, wait_done
from support.tiny import tiny_pair
from vrollout.cli import commands as cli
from vrollout.errors import BadTrajectory, TooLong
from vrollout.inputs.trajectories import parse_file
from vrollout.inputs.validation import open_keys, request_models, suggest
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.contexts import TokenLimit, tokenize_within
from vrollout.schema.requests import AnalyzeRequest
from vrollout.web.app import create_app

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello the world"}]
# Each case: the body, the field the error names, and words of the error.
CASES = {
    "misspelt key": ({**GOOD, "privilged": "a hint"}, "privilged", "privileged"),
    "bool top_k": ({**GOOD, "top_k": True}, "top_k", "integer"),
    "string temperature": (
        {"prompt": "hi", "generation": {"temperature": "0.5"}},
        "generation.temperature",
        "number",
    ),
    "role": (
        {"messages": [{"role": "system; rm -rf /", "content": "x"}, *CHAT]},
        "messages[0].role",
        "'tool'",
    ),
}
PEDAGOGICAL = {  # the same mistakes in a pedagogical request
    "misspelt key": {"prompt": "hi", "treshold": 0.1},
    "bool top_k": {"prompt": "hi", "max_rank": True},
    "string temperature": {"prompt": "hi", "generation": {"temperature": "0.5"}},
    "role": {"prompt": [{"role": "root", "content": "hi"}]},
}


def counting(tokenizer) -> dict[str, int]:
    """Count what `tokenizer` is asked to do (its class becomes a subclass that counts, then does
    the tokenizer's own work): calls, characters tokenized, chat templates applied."""
    seen = {"calls": 0, "chars": 0, "templates": 0}
    base = type(tokenizer)

    def call(self, text, *args, **kwargs):
        seen["calls"] += 1
        seen["chars"] += len(text)
        return base.__call__(self, text, *args, **kwargs)

    def template(self, *args, **kwargs):
        seen["templates"] += 1
        return base.apply_chat_template(self, *args, **kwargs)

    tokenizer.__class__ = type(
        f"Counting{base.__name__}", (base,), {"__call__": call, "apply_chat_template": template}
    )
    return seen


def client_with(pair, tmp_path, **limits) -> TestClient:
    settings = tiny_settings(tmp_path, **limits)
    return TestClient(create_app(settings, analyzer=Analyzer(pair, settings)), raise_server_exceptions=False)


# Every entry point --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_the_api_refuses_with_422_naming_the_field(tiny_client, case):
    body, field, words = CASES[case]
    for url in ("/api/analyze", "/api/tasks"):
        r = tiny_client.post(url, json=body)
        assert_error(r, 422, field, words)
        assert r.json()["details"][0]["field"] == field
    r = tiny_client.post("/api/pedagogical", json=PEDAGOGICAL[case])
    assert r.status_code == 422, r.text
    assert tiny_client.post("/api/pedagogical/tasks", json=PEDAGOGICAL[case]).status_code == 422


@pytest.mark.parametrize("case", CASES)
def test_an_uploaded_line_gets_its_own_error(tiny_client, case):
    body, field, words = CASES[case]
    r = upload(tiny_client, "\n".join([json.dumps(GOOD), json.dumps(body)]))
    assert r.status_code == 201, r.text
    [rejected] = r.json()["rejected"]
    assert rejected["line"] == 2 and field in rejected["error"] and words in rejected["error"]
    if case == "misspelt key":  # a near miss of a field was meant: the line's error, not meta
        assert rejected["error"] == "`privilged`: did you mean `privileged`?"


@pytest.mark.parametrize("case", CASES)
def test_the_python_api_raises(tiny, tmp_path, case):
    body, field, words = CASES[case]
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    with pytest.raises(BadTrajectory) as raised:
        analyzer.analyze(body)
    assert field in raised.value.message and words in raised.value.message
    assert raised.value.details["field"] == field
    with pytest.raises(BadTrajectory):
        analyzer.prepare_pedagogical(PEDAGOGICAL[case])
    with pytest.raises(BadTrajectory, match=field.replace("[", r"\[")):  # the notebook API: vrollout.load()
        vrollout.VirtualRollout(analyzer).analyze(body)


@pytest.fixture
def tiny_cli(tiny, monkeypatch):
    monkeypatch.setattr(Analyzer, "from_settings", classmethod(lambda cls, s, store=True: Analyzer(tiny, s)))


def test_the_cli_names_each_bad_line_and_warns_about_unknown_keys(tiny_cli, tmp_path, capsys):
    lines = [GOOD] + [CASES[case][0] for case in CASES] + [{**GOOD, "reward": 0.5, "meta": {"epoch": 3}}]
    src = tmp_path / "runs.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["analyze", str(src), "--out", str(out), "--no-store"]) == 1  # some lines failed
    err = capsys.readouterr().err
    assert f"{src}:2: `privilged`: did you mean `privileged`?" in err
    assert f"{src}:3: top_k must be an integer, got true" in err
    assert f'{src}:4: generation.temperature must be a number, got "0.5"' in err
    assert f"{src}:5: messages[0].role must be" in err
    assert f"{src}:6: warning: `reward` is not a field: kept in meta (1 line)" in err
    assert "2 analysed, 4 failed" in err
    analyses = [json.loads(line) for line in out.read_text().splitlines()]
    assert analyses[1]["trajectory"]["meta"] == {"reward": 0.5, "epoch": 3}


# Unknown keys in files -----------------------------------------------------------------------


def test_unknown_keys_are_kept_in_meta_and_listed_as_warnings(tiny_client):
    lines = [
        {**GOOD, "reward": 1.0, "epoch": 7},
        {**GOOD, "reward": 0.0, "meta": {"source": "run-3"}},
        GOOD,
    ]
    r = upload(tiny_client, "\n".join(json.dumps(x) for x in lines))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accepted"] == 3 and body["rejected"] == []
    warnings = {w["key"]: w for w in body["warnings"]}
    assert warnings["reward"]["lines"] == [1, 2] and warnings["reward"]["count"] == 2
    assert warnings["epoch"]["lines"] == [1] and "kept in meta" in warnings["epoch"]["warning"]
    job = wait_done(tiny_client, body["job"]["id"])
    assert job["warnings"] == body["warnings"] == body["job"]["warnings"]
    items = tiny_client.get(f"/api/jobs/{job['id']}/items").json()
    metas = [tiny_client.get(f"/api/analyses/{i['analysis_id']}").json()["trajectory"]["meta"] for i in items]
    assert metas == [{"reward": 1.0, "epoch": 7}, {"reward": 0.0, "source": "run-3"}, {}]
    page = tiny_client.get(f"/jobs/{job['id']}").text
    assert 'id="warnings"' in page and "<code>reward</code>" in page and "2 unknown keys kept in meta" in page


def test_near_misses_and_other_keys():
    assert suggest("privilged", AnalyzeRequest) == "privileged"
    assert suggest("Prompt", AnalyzeRequest) == "prompt"
    assert suggest("top-k", AnalyzeRequest) == "top_k"
    assert suggest("topk", AnalyzeRequest) == "top_k"
    assert suggest("responses", AnalyzeRequest) == "response"
    assert suggest("temperature", AnalyzeRequest) == "generation.temperature"
    for other in ("reward", "uid", "metadata", "epoch", "reference", "label", "ids"):
        assert suggest(other, AnalyzeRequest) is None, other
    line, unknown = open_keys({**GOOD, "reward": 1, "meta": {"reward": 2}}, AnalyzeRequest)
    assert unknown == ["reward"] and line == {**GOOD, "meta": {"reward": 2}}  # the line's own meta wins
    with pytest.raises(BadTrajectory, match="did you mean `generation.seed`"):
        open_keys({**GOOD, "seed": 3}, AnalyzeRequest)


def test_the_api_keeps_its_closed_schema(tiny_client):
    assert_error(tiny_client.post("/api/analyze", json={**GOOD, "reward": 1}), 422, "reward: not a field")


# Bounds from the settings, in /docs ----------------------------------------------------------


def test_the_settings_limits_are_the_bounds_in_the_schema(tiny, tmp_path):
    limits = {"max_top_k": 7, "max_continuation_tokens": 3, "max_new_tokens": 9, "max_context_tokens": 50}
    with client_with(tiny, tmp_path, chars_per_token=4, **limits) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        request = schemas["AnalyzeRequest"]["properties"]
        assert request["top_k"]["anyOf"][0]["maximum"] == 7 and request["top_k"]["anyOf"][0]["minimum"] == 0
        assert request["continuation_tokens"]["maximum"] == 3
        assert request["prompt"]["anyOf"][0]["maxLength"] == 200  # 50 tokens x 4 characters
        assert request["prompt_ids"]["anyOf"][0]["maxItems"] == 50
        assert schemas["GenerationOptions"]["properties"]["max_new_tokens"]["anyOf"][0]["maximum"] == 9
        roles = schemas["Message"]["properties"]["role"]["enum"]
        assert roles == ["system", "user", "assistant", "tool", "ipython", "developer"]
        assert "additionalProperties" in schemas["PedagogicalRequest"]
        assert_error(client.post("/api/analyze", json={**GOOD, "top_k": 8}), 422, "top_k must be at most 7")
        assert client.post("/api/analyze", json={**GOOD, "top_k": 7}).status_code == 200
    assert request_models(tiny_settings(tmp_path)) is request_models(tiny_settings(tmp_path))  # built once


# Refused before it costs -----------------------------------------------------------------------


def test_an_8_mib_prompt_is_refused_without_tokenizing(tmp_path):
    pair = tiny_pair()
    seen = counting(pair.student.tokenizer)
    prompt = "x" * (8 * 2**20 - 200)  # the body stays under VROLLOUT_MAX_REQUEST_BYTES
    with client_with(pair, tmp_path) as client:
        for url in ("/api/analyze", "/api/tasks", "/api/pedagogical"):
            r = client.post(
                url, json={"prompt": prompt, "response": "y"} if "ped" not in url else {"prompt": prompt}
            )
            assert_error(r, 413, "409600", "VROLLOUT_CHARS_PER_TOKEN")  # refused as it streams in, or parsed
        assert seen == {"calls": 0, "chars": 0, "templates": 0}
        assert client.post("/api/analyze", json=GOOD).status_code == 200  # the cap, not the server
        assert seen["calls"] > 0


@pytest.mark.parametrize(
    "body,words",
    [
        ({"prompt": "x" * 31, "response": "y"}, "prompt has 31 characters, over the limit of 30"),
        ({"prompt": "x", "response": "y" * 21}, "response has 21 characters, over the limit of 20"),
        ({**GOOD, "privileged": "p" * 31}, "privileged has 31 characters"),
        ({**GOOD, "reference_answer": "4" * 21}, "reference_answer has 21"),
        ({**GOOD, "id": "i" * 31}, "id has 31"),
        ({"messages": [{"role": "user", "content": "u" * 31}, CHAT[1]]}, "messages[0].content has 31"),
        (
            {"prompt": CHAT[:1], "completion": [{"role": "assistant", "content": "c" * 31}]},
            "completion[0].content",
        ),
        ({"prompt_ids": [1] * 16, "response_ids": [1]}, "prompt_ids has 16 tokens, over the limit of 15"),
        ({"prompt_ids": [1], "response_ids": [1] * 11}, "response_ids has 11 tokens"),
        # Whole contexts: messages each under the cap, together over it; with the privileged info;
        # a response from the messages (a message's cap is the larger of the two).
        (
            {"messages": [{"role": "user", "content": "u" * 16}] * 2 + [CHAT[1]]},
            "the prompt has 32 characters",
        ),
        ({**GOOD, "privileged": "p" * 29}, "the prompt and the privileged info have 31 characters"),
        (
            {"messages": [CHAT[0], {"role": "assistant", "content": "a" * 25}]},
            "the response has 25 characters",
        ),
    ],
)
def test_every_text_field_has_a_character_cap(tmp_path, body, words):
    pair = tiny_pair()
    seen = counting(pair.student.tokenizer)
    limits = {"max_context_tokens": 15, "max_response_tokens": 10, "chars_per_token": 2}
    with client_with(pair, tmp_path, **limits) as client:
        # Over the largest cap, the body is refused as it streams in (web/json_scan.py); under it,
        # by the field's own cap when the body is validated: a 413 naming the setting either way.
        assert_error(client.post("/api/analyze", json=body), 413, "VROLLOUT_")
        analyzer = client.app.state.analyzer
        with pytest.raises(TooLong, match=words.replace("[", r"\[")):
            analyzer.prepare(body)
    assert seen == {"calls": 0, "chars": 0, "templates": 0}


def test_an_oversized_upload_line_is_that_lines_error(tiny, tmp_path):
    giant = b'{"prompt": "' + b"x" * 5000  # never parsed: it would be invalid JSON
    assert parse_file(giant + b"\n{}", 10, max_line_bytes=1000)[1][0].error == (
        "the line is 5012 bytes, over the limit of 1000 (VROLLOUT_MAX_LINE_BYTES)"
    )
    items, bad = parse_file(json.dumps([GOOD, {"prompt": "x" * 2000}]).encode(), 10, max_line_bytes=1000)
    assert [n for n, _ in items] == [1] and bad[0].line == 2 and "VROLLOUT_MAX_LINE_BYTES" in bad[0].error
    with client_with(tiny, tmp_path, max_line_bytes=1000) as client:
        r = upload(client, b"\n".join([json.dumps(GOOD).encode(), giant, json.dumps(GOOD).encode()]))
        assert r.status_code == 201 and r.json()["accepted"] == 2, r.text
        assert r.json()["rejected"] == [
            {"line": 2, "error": "the line is 5012 bytes, over the limit of 1000 (VROLLOUT_MAX_LINE_BYTES)"}
        ]


def test_tokenizing_stops_once_a_context_is_over_its_limit(tmp_path):
    pair = tiny_pair()
    seen = counting(pair.student.tokenizer)
    settings = tiny_settings(tmp_path, max_context_tokens=2000)  # a cap of 200,000 characters
    analyzer = Analyzer(pair, settings)
    prompt = "é" * 150_000  # under the character cap; two tokens a character with the tiny tokenizer
    with pytest.raises(TooLong, match="student context is over the limit of 2000 tokens"):
        analyzer.prepare({"prompt": prompt, "response": "y"})
    assert seen["chars"] < 10_000, seen  # a piece or two, not 150,000 characters
    # A long text within the limit gets the exact ids of tokenizing it whole.
    tok = pair.student.tokenizer
    text = "hello the world, " * 300  # ~5,100 characters, over one piece
    whole = tok(text, add_special_tokens=False)["input_ids"]
    assert tokenize_within(tok, text, TokenLimit("text", len(whole), "X")) == whole
    with pytest.raises(
        TooLong, match=f"the text has {len(whole)} tokens, over the limit of {len(whole) - 1}"
    ):
        tokenize_within(tok, text, TokenLimit("text", len(whole) - 1, "X"))


def test_the_api_names_the_field_over_its_own_cap(tiny, tmp_path):
    # Under the largest cap (the prompt's, 30 characters) but over the response's (20): the body
    # passes the streaming look and the model refuses the field, naming it and its settings.
    with client_with(
        tiny, tmp_path, max_context_tokens=15, max_response_tokens=10, chars_per_token=2
    ) as client:
        r = client.post("/api/analyze", json={"prompt": "x", "response": "y" * 21})
        assert_error(r, 413, "response has 21 characters, over the limit of 20 (VROLLOUT_MAX_RESPONSE_TOKENS")
        assert r.json()["details"][0]["field"] == "response"
