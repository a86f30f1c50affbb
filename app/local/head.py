"""The output head's product in float32, whatever the model's dtype.

A bf16 model's head gives bf16 logits: each rounded to 8 significant bits, so a logit of 20 is
off by up to 0.06 and two close tokens tie or swap. Here the final hidden states and the head's
weights (both as the model holds them) are multiplied in float32, so the only error left is the
decoder's own (docs/metrics.md, "Precision"). TF32 is allowed on CUDA for this product: a bf16 or
fp16 value is exact in TF32's 10-bit significand and TF32 accumulates in float32, so the product
is the float32 one at tensor-core speed. The weights are cast `HEAD_BLOCK` vocabulary rows at a
time, so the extra memory is a block, never a float32 copy of the whole head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from vrollout.models import LoadedModel

HEAD_BLOCK = 16384  # vocabulary rows cast to float32 at a time: 16384 x 4096 x 4 B = 256 MiB at most
REDUCED = (torch.bfloat16, torch.float16)


@contextmanager
def tf32_allowed(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on CUDA for the duration (exact for bf16/fp16 inputs, module docstring)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = before


def projection(model: LoadedModel, hidden: Tensor, vocab_size: int) -> Tensor:
    """(C, vocab_size) float32: the head's product `hidden @ W.T (+ b)` for the first
    `vocab_size` rows of W, computed in float32. A head whose weights an accelerate device map
    offloaded (on "meta" until its hook brings them) runs as the model runs it, then upcast."""
    head = model.model.get_output_embeddings()
    weight = head.weight
    if weight.device.type == "meta" or not isinstance(head, torch.nn.Linear):
        return head(hidden)[:, :vocab_size].float()
    rows = min(vocab_size, weight.shape[0])
    x = hidden.to(weight.device, torch.float32)  # (C, H)
    if weight.dtype == torch.float32:
        return torch.nn.functional.linear(x, weight[:rows], None if head.bias is None else head.bias[:rows])
    out = torch.empty(x.shape[0], rows, dtype=torch.float32, device=weight.device)
    with tf32_allowed(weight.device):
        for v0 in range(0, rows, HEAD_BLOCK):
            v1 = min(v0 + HEAD_BLOCK, rows)
            out[:, v0:v1] = x @ weight[v0:v1].float().t()
    if head.bias is not None:
        out += head.bias[:rows].float()
    return out


def head_tolerance(dtype: torch.dtype, logits: Tensor) -> dict[str, float]:
    """`torch.allclose` tolerances for the start-up head check (`engine.check_head`): the model's
    own head rounds its logits to `dtype`, ours to float32, so they may differ by a few of the
    dtype's steps at the largest logit (bf16: 2^-8 relative; float32 stays at 1e-3)."""
    if dtype not in REDUCED:
        return {"atol": 1e-3, "rtol": 1e-3}
    eps = torch.finfo(dtype).eps
    return {"atol": 4 * eps * max(1.0, float(logits.abs().max())), "rtol": 2 * eps}
