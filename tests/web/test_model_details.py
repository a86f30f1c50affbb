"""The analysis page says how the analysis was computed and how far to trust it (issue #29): its
device and dtype, and for a model below float32 the noise bound, in the model details of the page
and of the one-file download."""

from __future__ import annotations

import re

import pytest
import torch
from fastapi.testclient import TestClient
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app

ANSWER = {"prompt": "hello", "response": "the hello the world", "privileged": "hint"}


def details(page: str) -> str:
    return re.search(r'<p class="note" id="model-details">(.*?)</p>', page, re.S).group(1)


def test_an_fp32_page_and_download_show_device_and_dtype(tiny_client):
    a = tiny_client.post("/api/analyze", json=ANSWER).json()
    for url in (f"/analyses/{a['id']}", f"/analyses/{a['id']}/download"):
        line = details(tiny_client.get(url).text)
        assert '<b data-key="device">cpu</b>' in line and '<b data-key="dtype">float32</b>' in line
        assert "logprob_bound" not in line and "no noise bound needed" in line


@pytest.fixture
def bf16_client(tmp_path):
    settings = tiny_settings(tmp_path)
    app = create_app(settings, analyzer=Analyzer(tiny_pair(torch.bfloat16), settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_bf16_page_and_download_show_the_noise_bound(bf16_client):
    a = bf16_client.post("/api/analyze", json=ANSWER).json()
    bound = a["noise"]["logprob_bound"]
    for url in (f"/analyses/{a['id']}", f"/analyses/{a['id']}/download"):
        line = details(bf16_client.get(url).text)
        assert '<b data-key="dtype">bfloat16</b>' in line and '<b data-key="device">cpu</b>' in line
        assert f'<b data-key="logprob_bound">{bound:.3g}</b> nats' in line
        assert '<span data-key="noise_method">fp32-copy</span>' in line and "uncertain" in line
