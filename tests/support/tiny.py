"""A tiny randomly initialised Llama and a byte-level tokenizer built in memory: no downloads.

torch, transformers and the model classes are imported by the functions that use them, so that a
test module can import these names at its top and still be collected without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
    from vrollout.models import ModelPair

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
    merges = [("h", "e"), ("he", "l"), ("Ġ", "t"), ("Ġt", "h")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(vocab_size: int, seed: int = 0, dtype: torch.dtype | None = None) -> LlamaForCausalLM:
    """float32 unless `dtype` says otherwise."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    # Random init gives nearly uniform distributions; sharpen them so top-1 and ranks mean something.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model.to(dtype or torch.float32).eval()


def tiny_pair(dtype: torch.dtype | None = None, teacher_seed: int | None = None) -> ModelPair:
    from vrollout.config import DEFAULT_TEACHER_TEMPLATE
    from vrollout.models import LoadedModel, pair_from_models

    tok = tiny_tokenizer()
    student = LoadedModel("tiny-student", "memory", tiny_model(len(tok), 0, dtype), tok)
    teacher = None
    if teacher_seed is not None:
        teacher = LoadedModel("tiny-teacher", "memory", tiny_model(len(tok), teacher_seed, dtype), tok)
    return pair_from_models(student, teacher, DEFAULT_TEACHER_TEMPLATE)
