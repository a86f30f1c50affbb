"""Teacher continuations: the teacher's greedy k-token continuation from every prefix.

"If the teacher took the wheel here." Greedy decoding is a function of the prefix, so where the
response takes the teacher's top-1 the continuation from t is that token followed by the
continuation from t+1 (`pipeline.branches.shared_roots`): only the positions where the response leaves the
teacher are decoded. Those branches all share the key/value cache of one teacher-forced pass
over context + response (the replay's, in an analysis); each decoding step feeds one token per
branch, and each branch attends to the original tokens before its position and to its own
earlier tokens (`branch_attention`), so k tokens for all T branches cost about k forward passes
over the sequence instead of T `generate` calls, and much less where the teacher agrees with
the response. Branches go in chunks of consecutive positions so memory stays bounded, and each
chunk attends only to the prefix its branches can see (a view of the shared cache cut at its
last branch's position), not to the whole sequence.
Naive equivalent: `reference.naive_continuation` once per prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from vrollout.local.engine import head_logits
from vrollout.models import LoadedModel
from vrollout.pipeline.branches import from_divergences
from vrollout.pipeline.replay import Progress, _no_progress
from vrollout.rules import cut_at_eos, eos_set


def eos_ids(model: LoadedModel) -> set[int]:
    """The model's end-of-sequence ids (`rules.eos_set` of its generation config)."""
    return eos_set(model.model.generation_config.eos_token_id, model.tokenizer.eos_token_id)


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


BLOCK = 64  # branches whose prefix attention is computed together


@dataclass(frozen=True)
class BranchBlocks:
    """Branches of one chunk in blocks of consecutive positions: block j holds branches
    [lo, hi) of the chunk, and `bias[j]` (g*(hi-lo), seen_j) is 0 where a branch may see a
    prefix position and very negative elsewhere, seen_j being the prefix its last branch sees.
    Scoring each block only against its own prefix skips the triangle of positions that no
    branch of the block can see (about a third of the attention of a chunk)."""

    prefix: int  # the positions of the prefix view: what the chunk's last branch sees
    bounds: list[tuple[int, int]]
    bias: list[Tensor]

    @classmethod
    def build(cls, starts: Tensor, groups: int, dtype: torch.dtype, block: int | None = None) -> BranchBlocks:
        """`starts` (B,): each branch's first position, ascending; `block` branches per block
        (default `BLOCK`)."""
        block = block or BLOCK
        assert bool((starts[1:] >= starts[:-1]).all()), "branches go in order of position"
        bounds = [(lo, min(lo + block, len(starts))) for lo in range(0, len(starts), block)]
        bias = [_prefix_bias(starts[lo:hi], int(starts[hi - 1]), groups, dtype) for lo, hi in bounds]
        return cls(int(starts[-1]), bounds, bias)


def branch_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    branch_blocks: BranchBlocks | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """Attention for one decoding step of B branches (B queries), with the same result as the
    4-D mask of `_branch_mask` but without scoring the cache entries a branch cannot see.

    query (1, H, B, d); key/value (1, Hkv, P + steps*B, d): the prefix view P, then one entry
    per branch per step (entry e belongs to branch e % B). Query head h uses key head h // g,
    g = H/Hkv. Each block of branches (`BranchBlocks`) is scored against the prefix it can see
    (mask and scale fused into one batched GEMM) and against its branches' own entries; the
    softmax runs over both parts in place, without concatenating them.
    Returns (1, B, H, d) like the library's kernels.
    """
    assert branch_blocks is not None, "branch_attention is only for branch decoding steps"
    dtype = query.dtype
    if dtype != torch.float32:  # scores and softmax in float32, as the fused kernels of the pass keep them
        query, key, value = query.float(), key.float(), value.float()
    _, H, B, d = query.shape
    Hkv = key.shape[1]
    g = H // Hkv
    P = branch_blocks.prefix
    steps = (key.shape[2] - P) // B
    own_k = key[0, :, P:].view(Hkv, steps, B, d)
    own_v = value[0, :, P:].view(Hkv, steps, B, d)
    out = query.new_empty(B, Hkv, g, d)
    for (lo, hi), bias in zip(branch_blocks.bounds, branch_blocks.bias, strict=True):
        bias = bias.to(
            query.device, query.dtype
        )  # built on the input device; a split model's layer may be on another
        S, seen = hi - lo, bias.shape[1]
        q = query[0, :, lo:hi].reshape(Hkv, g, S, d).contiguous()
        scores = torch.baddbmm(bias, q.view(Hkv, g * S, d), key[0, :, :seen].transpose(1, 2), alpha=scaling)
        own = torch.einsum("hgbd,hsbd->hgbs", q, own_k[:, :, lo:hi]).reshape(Hkv, g * S, steps)
        own.mul_(scaling)
        top = torch.maximum(scores.amax(-1, keepdim=True), own.amax(-1, keepdim=True))
        scores.sub_(top).exp_()
        own.sub_(top).exp_()
        total = scores.sum(-1, keepdim=True).add_(own.sum(-1, keepdim=True))
        block = torch.bmm(scores, value[0, :, :seen])  # (Hkv, gS, d)
        block += torch.einsum("hgbs,hsbd->hgbd", own.view(Hkv, g, S, steps), own_v[:, :, lo:hi]).reshape(
            Hkv, g * S, d
        )
        block /= total
        out[lo:hi] = block.view(Hkv, g, S, d).permute(2, 0, 1, 3)
    return out.view(1, B, H, d).to(dtype), None


def _prefix_bias(starts: Tensor, prefix: int, groups: int, dtype: torch.dtype) -> Tensor:
    """(groups*B, prefix): 0 where branch b may see prefix position j (j < starts[b]), else the
    dtype's lowest value; repeated for the `groups` query heads that share a key head."""
    hidden = torch.arange(prefix, device=starts.device)[None, :] >= starts[:, None]  # (B, P)
    bias = torch.zeros(hidden.shape, dtype=dtype, device=starts.device)
    bias.masked_fill_(hidden, torch.finfo(dtype).min)
    return bias.repeat(groups, 1)


AttentionInterface.register(BRANCH_ATTENTION, branch_attention)


SCORES_BYTES = 512 * 2**20  # attention scores of one chunk of branches, at most (about), off CUDA
SCORES_SHARE = 0.25  # on CUDA: the share of the free memory a chunk's attention scores may take


def chunk_for(
    requested: int, heads: int, length: int, element_bytes: int = 4, free_bytes: int | None = None
) -> int:
    """Branches per chunk: `requested`, fewer where a chunk's attention scores (three float32
    tensors of heads x branches x length: scores, their softmax input and output) would pass
    SCORES_BYTES, or on CUDA (`free_bytes`, from `torch.cuda.mem_get_info`) a quarter of the
    free memory, where that is more."""
    budget = SCORES_BYTES if free_bytes is None else max(SCORES_BYTES, int(free_bytes * SCORES_SHARE))
    return min(requested, max(16, budget // (3 * heads * length * element_bytes)))


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (`torch.cuda.mem_get_info`, what the caching allocator holds
    but does not use counted as free); None elsewhere: the CPU sizes stay as they are."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


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
    share: bool = True,
) -> list[list[int]]:
    """For each t in `positions` (default: 0..T-1): the greedy k-token continuation of
    context + response[:t], cut after the first end-of-sequence token.

    `forced`: what the replay already has, the key/value cache of the teacher's pass over
    context + response and the teacher's top-1 id at every step (each branch's first token),
    so that no teacher-forced pass is run again here.
    `share`: decode only where the response leaves the teacher's top-1 (`shared_roots`); False
    decodes every wanted position (the worst case, for benchmarks and tests)."""
    n, T = len(context), len(response)
    L = n + T
    positions = list(range(T)) if positions is None else positions
    vocab = vocab_size or model.model.get_output_embeddings().out_features
    if forced is None:
        decoder = model.model.get_decoder()
        out = decoder(input_ids=torch.tensor([context + response], device=model.input_device), use_cache=True)
        shared = out.cache
        hidden = out.last_hidden_state[0, n - 1 : L - 1]  # (T, H): state before each response token
        top1 = torch.cat([head_logits(model, h, vocab).argmax(-1) for h in hidden.split(512)]).tolist()
    else:
        shared, top1 = forced
        assert shared.get_seq_length() == L and len(top1) == T, "the replay's cache is for another input"
    eos = eos_ids(model)

    def decode(wanted: list[int]) -> list[list[int]]:
        return _decode(model, shared, n, top1, wanted, k, eos, progress, branch_chunk, stage, vocab)

    if not share:
        return decode(positions)
    return from_divergences(decode, response, top1, positions, k, eos)


def _decode(
    model: LoadedModel,
    shared: Any,
    n: int,
    top1: list[int],
    positions: list[int],
    k: int,
    eos: set[int],
    progress: Progress,
    branch_chunk: int,
    stage: str,
    vocab: int,
) -> list[list[int]]:
    """Decode the branches at `positions` together (k tokens each, the first being the teacher's
    top-1 there) from the shared cache of context + response, in chunks of `branch_chunk`.
    Decoding of a chunk stops early once every branch in it has ended."""
    L = shared.get_seq_length()
    decoder = model.model.get_decoder()
    firsts = torch.tensor(top1, device=model.input_device, dtype=torch.long)  # (T,)
    config = decoder.config
    groups = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    eos_tensor = torch.tensor(sorted(eos), device=model.input_device, dtype=torch.long)
    results: list[list[int]] = []
    progress(stage, 0, len(positions))
    branch_chunk = chunk_for(branch_chunk, config.num_attention_heads, L, 4, free_memory(model.input_device))
    for b0 in range(0, len(positions), branch_chunk):
        chunk = torch.tensor(positions[b0 : b0 + branch_chunk], device=model.input_device)  # (B,)
        B = len(chunk)
        # (B,) first tokens: the teacher's top-1 at each branch's position
        current = firsts[chunk]
        tokens = [current]
        ended = torch.isin(current, eos_tensor)  # (B,)
        starts = n + chunk  # (B,) position of each branch's first token
        seen = int(starts.max())  # original positions any branch of the chunk can see
        cache = _prefix_view(shared, seen)
        if cache is None:
            cache, seen = shared, L
        else:
            blocks = BranchBlocks.build(starts, groups, model.dtype)
        masked = cache is shared  # sliding-window caches: the library's attention with a 4-D mask
        steps = 1
        with _attention(config, None if masked else BRANCH_ATTENTION):
            while steps < k and not bool(ended.all()):
                step_kwargs: dict[str, object] = (
                    {"attention_mask": _branch_mask(starts, L, B, steps, model.dtype)}
                    if masked
                    else {"branch_blocks": blocks}
                )
                step_out = decoder(
                    input_ids=current[None, :],
                    position_ids=(starts + steps - 1)[None, :],
                    cache=cache,
                    use_cache=True,
                    **step_kwargs,
                )
                # (B,), back on the input device (a split model's head may sit on another)
                current = (
                    head_logits(model, step_out.last_hidden_state[0], vocab).argmax(-1).to(firsts.device)
                )
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
