"""A tiny teacher with another tokenizer: sentencepiece-style ('▁' for spaces, byte fallback, no
chat template, as Gemma's), built in memory, beside the tiny byte-level student (support.tiny)."""

from __future__ import annotations

import dataclasses
import string

import torch
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast
from vrollout.config import DEFAULT_TEACHER_TEMPLATE
from vrollout.models import LoadedModel, ModelPair, pair_from_models

from support.tiny import tiny_model, tiny_pair

MERGES = [
    ("▁", "t"),
    ("▁t", "h"),
    ("▁th", "e"),
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("▁", "w"),
]


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Specials <unk> <s> </s>, the 256 byte tokens, ASCII letters, digits and punctuation, a few
    merges; every other character falls back to its UTF-8 bytes."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["▁"] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces += [a + b for a, b in MERGES]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, byte_fallback=True, unk_token="<unk>"))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def cross_pair(dtype: torch.dtype = torch.float32) -> ModelPair:
    """The tiny student and a tiny teacher of the sentencepiece-style vocabulary."""
    student = tiny_pair(dtype).student
    tok = sentencepiece_tokenizer()
    teacher = LoadedModel("tiny-sp-teacher", "memory", tiny_model(len(tok), 3, dtype), tok)
    return pair_from_models(student, teacher, DEFAULT_TEACHER_TEMPLATE, allow_cross_tokenizer=True)


def forced_cross(pair: ModelPair) -> ModelPair:
    """A same-tokenizer pair sent through the cross-tokenizer path (for the property test)."""
    return dataclasses.replace(pair, cross_tokenizer=True, teacher_vocab_size=pair.vocab_size)
