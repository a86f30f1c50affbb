"""Model loading: device and dtype, the vocabulary check, the converted-model cache."""

from __future__ import annotations

import json
import os
import random
import shutil
import time

import pytest
import torch
from support import REAL_CACHE
from support.tiny import tiny_model, tiny_tokenizer
from vrollout.config import DEFAULT_TEACHER_TEMPLATE
from vrollout.errors import ModelMismatch
from vrollout.models import (
    DEFAULT_GGUF,
    DEFAULT_NAME,
    GGUF_SAMPLE_BYTES,
    GGUF_SAMPLES,
    LoadedModel,
    default_gguf_path,
    default_model_folder,
    gguf_key,
    gguf_model_folder,
    pair_from_models,
    pick_device_dtype,
)


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


@pytest.mark.real_model
def test_the_same_gguf_elsewhere_finds_the_same_conversion(real_analyzer, tmp_path):
    """Another environment's copy of the wheel (another path, another time) converts nothing."""
    folder = default_model_folder(REAL_CACHE)
    copy = tmp_path / "elsewhere" / DEFAULT_GGUF
    copy.parent.mkdir()
    shutil.copyfile(default_gguf_path(), copy)
    start = time.perf_counter()
    assert gguf_model_folder(copy, DEFAULT_NAME, REAL_CACHE) == folder
    assert time.perf_counter() - start < 5  # a conversion takes 20 s or more


def test_a_gguf_key_follows_the_content_not_the_path(tmp_path):
    data = bytearray(random.Random(0).randbytes(3_000_000))
    first, second = tmp_path / "a.gguf", tmp_path / "b" / "a.gguf"
    second.parent.mkdir()
    first.write_bytes(data)
    second.write_bytes(data)
    os.utime(second, (1, 1))
    assert gguf_key(first) == gguf_key(second)
    data[(len(data) - GGUF_SAMPLE_BYTES) * 8 // (GGUF_SAMPLES - 1) + 10] ^= 1  # a block in the middle
    second.write_bytes(data)
    assert gguf_key(first) != gguf_key(second)
    second.write_bytes(bytes(data) + b"x")  # another size
    assert gguf_key(first) != gguf_key(second)
