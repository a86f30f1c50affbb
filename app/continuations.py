"""Teacher continuations: the teacher's greedy k-token continuation from every prefix.

"If the teacher took the wheel here." All T branches share the key/value cache of one
teacher-forced pass over context + response; each decoding step feeds one token per branch
with a custom 4-D attention mask (a branch sees the original tokens before its position and
its own earlier tokens), so k tokens for all T branches cost about k forward passes over the
sequence instead of T `generate` calls. Branches go in chunks so memory stays bounded.
Naive equivalent: `reference.naive_continuation` once per prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


@torch.inference_mode()
def continuations_from_every_prefix(
    model: LoadedModel,
    context: list[int],
    response: list[int],
    k: int,
    progress: Progress = _no_progress,
    vocab_size: int | None = None,
    branch_chunk: int = 128,
    positions: list[int] | None = None,
    stage: str = "continuations",
) -> list[list[int]]:
    """For each t in `positions` (default: 0..T-1): the greedy k-token continuation of
    context + response[:t], cut after the first end-of-sequence token. Decoding of a chunk
    stops early once every branch in it has ended."""
    n, T = len(context), len(response)
    L = n + T
    positions = list(range(T)) if positions is None else positions
    vocab = vocab_size or model.model.get_output_embeddings().out_features
    decoder = model.model.get_decoder()
    ids = torch.tensor([context + response], device=model.device)  # (1, L)
    out = decoder(input_ids=ids, use_cache=True)
    cache = out.cache
    hidden = out.last_hidden_state[0, n - 1 : L - 1]  # (T, H): state before each response token
    eos = eos_ids(model)
    eos_tensor = torch.tensor(sorted(eos), device=model.device, dtype=torch.long)
    results: list[list[int]] = []
    progress(stage, 0, len(positions))
    for b0 in range(0, len(positions), branch_chunk):
        chunk = torch.tensor(positions[b0 : b0 + branch_chunk], device=model.device)  # (B,)
        B = len(chunk)
        current = head_logits(model, hidden[chunk], vocab).argmax(-1)  # (B,) first tokens
        tokens = [current]
        ended = torch.isin(current, eos_tensor)  # (B,)
        starts = n + chunk  # (B,) position of each branch's first token
        steps = 1
        while steps < k and not bool(ended.all()):
            mask = _branch_mask(starts, L, B, steps, model.dtype)
            step_out = decoder(
                input_ids=current[None, :],
                position_ids=(starts + steps - 1)[None, :],
                attention_mask=mask,
                cache=cache,
                use_cache=True,
            )
            current = head_logits(model, step_out.last_hidden_state[0], vocab).argmax(-1)  # (B,)
            tokens.append(current)
            ended |= torch.isin(current, eos_tensor)
            steps += 1
        if steps > 1:
            cache.crop(-B * (steps - 1))  # back to the original L positions for the next chunk
        block = torch.stack(tokens, dim=1).tolist()  # (B, steps)
        results.extend(cut_at_eos(row, eos) for row in block)
        progress(stage, min(b0 + branch_chunk, len(positions)), len(positions))
    return results
