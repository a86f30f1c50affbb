"""A cross-tokenizer analysis says how it was computed (issue #29): `device` and `dtype`, as every
analysis does, and it still fits the typed analysis."""

from __future__ import annotations

import torch
from support import tiny_settings
from support.cross import cross_pair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.schema.analysis import analysis_adapter

ANSWER = {"prompt": "Say hello", "response": "héllo the ☃ world", "privileged": "x"}


def test_a_cross_tokenizer_analysis_carries_device_and_dtype(tmp_path):
    a = Analyzer(cross_pair(), tiny_settings(tmp_path)).analyze(ANSWER)
    assert a["alignment"] and a["device"] == "cpu" and a["dtype"] == "float32"
    analysis_adapter().validate_python(a, strict=True)


def test_a_bf16_cross_tokenizer_analysis_says_bfloat16(tmp_path):
    a = Analyzer(cross_pair(torch.bfloat16), tiny_settings(tmp_path)).analyze(ANSWER)
    assert a["device"] == "cpu" and a["dtype"] == "bfloat16" and "noise" not in a
