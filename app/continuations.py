"""Teacher continuations: the teacher's greedy k-token continuation from every prefix.

"If the teacher took the wheel here." All T branches share the key/value cache of one
teacher-forced pass over context + response; each decoding step feeds one token per branch
with a custom 4-D attention mask (a branch sees the original tokens before its position and
its own earlier tokens), so k tokens for all T branches cost about k forward passes over the
sequence instead of T `generate` calls. Branches go in chunks of consecutive positions so
memory stays bounded, and each chunk attends only to the prefix its branches can see (a view
of the shared cache cut at its last branch's position), not to the whole sequence.
Naive equivalent: `reference.naive_continuation` once per prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

from .engine import Progress, _no_progress, head_logits
from .models import LoadedModel


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """A continuation ends with the first end-of-sequence token (kept)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


def eos_ids(model: LoadedModel) -> set[int]:
    eos = model.model.generation_config.eos_token_id
    if eos is None:
        eos = model.tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


def _branch_mask(starts: Tensor, original: int, branches: int, step: int, dtype: torch.dtype) -> Tensor:
    """Additive mask (1, 1, B, original + B*step): branch b sees original positions < starts[b]
    and the cache entries it appended itself (entry e belongs to branch e % B)."""
    device = starts.device
    orig = torch.arange(original, device=device)[None, :] < starts[:, None]  # (B, L)
    own = (
        torch.arange(branches * step, device=device)[None, :] % branches
        == torch.arange(branches, device=device)[:, None]
    )  # (B, B*step)
    allowed = torch.cat([orig, own], dim=1)  # (B, L + B*step)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def _prefix_view(cache: DynamicCache, end: int) -> DynamicCache | None:
    """A new cache holding views of the first `end` positions of `cache` (no copy; decoding
    appends to the new cache only). None for caches other than plain full-attention layers
    (sliding windows): those decode on the shared cache, cropped back after each chunk."""
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    return DynamicCache([(layer.keys[:, :, :end], layer.values[:, :, :end]) for layer in cache.layers])


BRANCH_ATTENTION = "vrollout_branches"


@contextmanager
def _attention(config: Any, implementation: str | None) -> Iterator[None]:
    """Use another registered attention implementation for the duration (None: no change).
    Model work runs one job at a time, so the shared config is safe to switch."""
    if implementation is None:
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before


def branch_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    branch_bias: Tensor | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """Attention for one decoding step of B branches (B queries), with the same result as the
    4-D mask of `_branch_mask` but without scoring the B*steps cache entries a branch cannot see.

    query (1, H, B, d); key/value (1, Hkv, P + steps*B, d): the prefix view P, then one entry
    per branch per step (entry e belongs to branch e % B). `branch_bias` (g*B, P), g = H/Hkv,
    is 0 where a branch may see a prefix position and very negative elsewhere (`_prefix_bias`).
    Returns (1, B, H, d) like the library's kernels.
    """
    assert branch_bias is not None, "branch_attention is only for branch decoding steps"
    _, H, B, d = query.shape
    Hkv, P = key.shape[1], branch_bias.shape[1]
    g, steps = H // Hkv, (key.shape[2] - P) // B
    q = query[0].reshape(Hkv, g * B, d)  # query head h uses key head h // g
    # Scores: the prefix (mask and scale fused into one batched GEMM), then the branch's own.
    prefix = torch.baddbmm(branch_bias, q, key[0, :, :P].transpose(1, 2), alpha=scaling)  # (Hkv, gB, P)
    own_k = key[0, :, P:].view(Hkv, steps, B, d)
    own_v = value[0, :, P:].view(Hkv, steps, B, d)
    own = torch.einsum("hgbd,hsbd->hgbs", q.view(Hkv, g, B, d), own_k).reshape(Hkv, g * B, steps)
    own.mul_(scaling)
    probs = torch.softmax(torch.cat([prefix, own], dim=-1), dim=-1)  # (Hkv, gB, P + steps)
    out = torch.bmm(probs[..., :P], value[0, :, :P])  # (Hkv, gB, d)
    own_p = probs[..., P:].reshape(Hkv, g, B, steps)
    out += torch.einsum("hgbs,hsbd->hgbd", own_p, own_v).reshape(Hkv, g * B, d)
    return out.view(H, B, d).transpose(0, 1)[None], None


def _prefix_bias(starts: Tensor, prefix: int, groups: int, dtype: torch.dtype) -> Tensor:
    """(groups*B, prefix): 0 where branch b may see prefix position j (j < starts[b]), else the
    dtype's lowest value; repeated for the `groups` query heads that share a key head."""
    hidden = torch.arange(prefix, device=starts.device)[None, :] >= starts[:, None]  # (B, P)
    bias = torch.zeros(hidden.shape, dtype=dtype, device=starts.device)
    bias.masked_fill_(hidden, torch.finfo(dtype).min)
    return bias.repeat(groups, 1)


AttentionInterface.register(BRANCH_ATTENTION, branch_attention)


SCORES_BYTES = 512 * 2**20  # attention scores of one chunk of branches, at most (about)


def chunk_for(requested: int, heads: int, length: int, element_bytes: int) -> int:
    """Branches per chunk: `requested`, fewer where a chunk's attention scores (three tensors of
    heads x branches x length: scores, their softmax input and output) would pass SCORES_BYTES."""
    return min(requested, max(16, SCORES_BYTES // (3 * heads * length * element_bytes)))


@torch.inference_mode()
def continuations_from_every_prefix(
    model: LoadedModel,
    context: list[int],
    response: list[int],
    k: int,
    progress: Progress = _no_progress,
    vocab_size: int | None = None,
    branch_chunk: int = 512,
    positions: list[int] | None = None,
    stage: str = "continuations",
    forced: tuple[Any, list[int]] | None = None,
) -> list[list[int]]:
    """For each t in `positions` (default: 0..T-1): the greedy k-token continuation of
    context + response[:t], cut after the first end-of-sequence token. Decoding of a chunk
    stops early once every branch in it has ended.

    `forced`: what the replay already has, the key/value cache of the teacher's pass over
    context + response and the teacher's top-1 id at every step (each branch's first token),
    so that no teacher-forced pass is run again here."""
    n, T = len(context), len(response)
    L = n + T
    positions = list(range(T)) if positions is None else positions
    vocab = vocab_size or model.model.get_output_embeddings().out_features
    decoder = model.model.get_decoder()
    if forced is None:
        ids = torch.tensor([context + response], device=model.device)  # (1, L)
        out = decoder(input_ids=ids, use_cache=True)
        shared = out.cache
        hidden = out.last_hidden_state[0, n - 1 : L - 1]  # (T, H): state before each response token
        firsts = None
    else:
        shared, top1 = forced
        assert shared.get_seq_length() == L and len(top1) == T, "the replay's cache is for another input"
        firsts = torch.tensor(top1, device=model.device)  # (T,)
    config = decoder.config
    groups = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    eos = eos_ids(model)
    eos_tensor = torch.tensor(sorted(eos), device=model.device, dtype=torch.long)
    results: list[list[int]] = []
    progress(stage, 0, len(positions))
    branch_chunk = chunk_for(branch_chunk, config.num_attention_heads, L, model.dtype.itemsize)
    for b0 in range(0, len(positions), branch_chunk):
        chunk = torch.tensor(positions[b0 : b0 + branch_chunk], device=model.device)  # (B,)
        B = len(chunk)
        # (B,) first tokens: the teacher's top-1 at each branch's position
        current = firsts[chunk] if firsts is not None else head_logits(model, hidden[chunk], vocab).argmax(-1)
        tokens = [current]
        ended = torch.isin(current, eos_tensor)  # (B,)
        starts = n + chunk  # (B,) position of each branch's first token
        seen = int(starts.max())  # original positions any branch of the chunk can see
        cache = _prefix_view(shared, seen)
        if cache is None:
            cache, seen = shared, L
        else:
            bias = _prefix_bias(starts, seen, groups, model.dtype)
        masked = cache is shared  # sliding-window caches: the library's attention with a 4-D mask
        steps = 1
        with _attention(config, None if masked else BRANCH_ATTENTION):
            while steps < k and not bool(ended.all()):
                step_kwargs: dict[str, object] = (
                    {"attention_mask": _branch_mask(starts, L, B, steps, model.dtype)}
                    if masked
                    else {"branch_bias": bias}
                )
                step_out = decoder(
                    input_ids=current[None, :],
                    position_ids=(starts + steps - 1)[None, :],
                    cache=cache,
                    use_cache=True,
                    **step_kwargs,
                )
                current = head_logits(model, step_out.last_hidden_state[0], vocab).argmax(-1)  # (B,)
                tokens.append(current)
                ended |= torch.isin(current, eos_tensor)
                steps += 1
                progress(stage, b0 + B * steps // k, len(positions))
        if masked and steps > 1:
            cache.crop(-B * (steps - 1))  # back to the original L positions for the next chunk
        del cache
        block = torch.stack(tokens, dim=1).tolist()  # (B, steps)
        results.extend(cut_at_eos(row, eos) for row in block)
        progress(stage, min(b0 + branch_chunk, len(positions)), len(positions))
    return results
