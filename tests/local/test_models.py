"""Model loading: device and dtype, the vocabulary check, the converted-model cache."""

from __future__ import annotations

import json

import pytest
import torch
from support import REAL_CACHE
from support.tiny import tiny_model, tiny_tokenizer
from vrollout.config import DEFAULT_TEACHER_TEMPLATE
from vrollout.core.errors import ModelMismatch
from vrollout.local.models import LoadedModel, default_model_folder, pair_from_models, pick_device_dtype


def test_device_and_dtype():
    expected = (
        (torch.device("cuda"), torch.bfloat16)
        if torch.cuda.is_available()
        else (torch.device("cpu"), torch.float32)
    )
    assert pick_device_dtype("auto", "auto") == expected
    assert pick_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        pick_device_dtype("cpu", "float8")


def test_different_vocabularies_are_refused():
    tok = tiny_tokenizer()
    other = tiny_tokenizer()
    other.add_tokens(["<extra>"])
    student = LoadedModel("student", "memory", tiny_model(len(tok)), tok)
    teacher = LoadedModel("teacher", "memory", tiny_model(len(other)), other)
    with pytest.raises(ModelMismatch, match="different vocabularies"):
        pair_from_models(student, teacher, DEFAULT_TEACHER_TEMPLATE)


def test_teacher_template_needs_both_placeholders(tiny):
    with pytest.raises(ValueError, match="privileged"):
        pair_from_models(tiny.student, None, "{prompt} only")


@pytest.mark.real_model
def test_gguf_conversion_is_cached(real_analyzer):
    folder = default_model_folder(REAL_CACHE)
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF marker is dropped before saving
    assert default_model_folder(REAL_CACHE) == folder  # the second call converts nothing
