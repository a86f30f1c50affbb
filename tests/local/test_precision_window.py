"""The model's window is respected (issue #29): context + response (+ continuation tokens) past
`max_position_embeddings` (or the window a rope scaling stretches it to) is refused with a
message naming both numbers, never run on with plausible-looking numbers."""

from __future__ import annotations

import pytest
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.errors import TooLong
from vrollout.models import context_window
from vrollout.pipeline.analyzer import Analyzer

WINDOW = 48


@pytest.fixture
def analyzer(tmp_path):
    pair = tiny_pair()
    pair.student.model.config.max_position_embeddings = WINDOW
    return Analyzer(pair, tiny_settings(tmp_path))


def test_a_response_past_the_window_is_refused_naming_both_numbers(analyzer):
    response = "hello the world " * 4  # the chat template's context and this: past 48 positions
    with pytest.raises(TooLong) as caught:
        analyzer.analyze({"prompt": "hi", "response": response})
    message = caught.value.message
    assert f"{WINDOW}-position window" in message and "max_position_embeddings" in message
    tokens = caught.value.details["tokens"]
    assert tokens > WINDOW and f"is {tokens} tokens" in message


def test_a_response_inside_the_window_runs(analyzer):
    assert analyzer.analyze({"prompt": "hi", "response": "hello"})["steps"]


def test_continuation_tokens_count_against_the_window(analyzer):
    fits = analyzer.analyze({"prompt": "hi", "response": "hello the"})
    used = len(fits["student"]["context_ids"]) + len(fits["response_ids"])
    with pytest.raises(TooLong, match="continuation tokens is .* window"):
        analyzer.analyze({"prompt": "hi", "response": "hello the", "continuation_tokens": WINDOW - used + 1})


def test_a_generation_past_the_window_is_refused(analyzer):
    with pytest.raises(TooLong, match="max_new_tokens is .* tokens, beyond the 48-position window"):
        analyzer.analyze({"prompt": "hi", "generation": {"max_new_tokens": WINDOW}})


def test_a_rope_scaling_that_stretches_the_window_is_counted_and_named():
    pair = tiny_pair()
    config = pair.student.model.config
    config.max_position_embeddings = 100
    assert context_window(pair.student).positions == 100
    config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 100}
    window = context_window(pair.student)
    assert window.positions == 400 and "yarn" in window.source and "100" in window.source
    # Llama 3.1's way: the config's number already is the stretched window
    config.max_position_embeddings = 800
    config.rope_parameters = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 100}
    window = context_window(pair.student)
    assert window.positions == 800 and "llama3" in window.source
